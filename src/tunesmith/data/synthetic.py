"""The built-in quick-start task: extract four fields from a generated sentence (seeded).

Each record is an instruction example whose answer is checkable by exact match, e.g.
  input:  "At 34, Maria Lopez is a nurse based in Denver."
  output: "Maria Lopez | 34 | Denver | nurse"
Small instruct models do this poorly zero-shot (wrong format, wrong fields) and learn it in a
few hundred LoRA steps.
"""

import random

INSTRUCTION = "Extract the person's name, age, city and job from the text. Answer exactly as: name | age | city | job"
FIRST = [
    "Maria",
    "John",
    "Aisha",
    "Kenji",
    "Olga",
    "Pedro",
    "Fatima",
    "Liam",
    "Chen",
    "Sofia",
    "Omar",
    "Emma",
    "Ravi",
    "Lucia",
    "Noah",
    "Ines",
    "Tomas",
    "Yara",
    "Igor",
    "Hana",
    "Diego",
    "Nora",
    "Felix",
    "Amara",
]
LAST = [
    "Lopez",
    "Smith",
    "Khan",
    "Tanaka",
    "Petrova",
    "Silva",
    "Haddad",
    "Murphy",
    "Wang",
    "Rossi",
    "Farouk",
    "Dubois",
    "Patel",
    "Moreno",
    "Becker",
    "Costa",
    "Novak",
    "Mensah",
    "Ivanov",
    "Sato",
    "Garcia",
    "Berg",
]
CITIES = [
    "Denver",
    "Lyon",
    "Osaka",
    "Nairobi",
    "Porto",
    "Krakow",
    "Austin",
    "Dublin",
    "Seoul",
    "Lima",
    "Oslo",
    "Cairo",
    "Hamburg",
    "Quebec",
    "Perth",
    "Bogota",
    "Turin",
    "Accra",
    "Riga",
    "Leeds",
]
JOBS = [
    "nurse",
    "baker",
    "pilot",
    "teacher",
    "plumber",
    "chemist",
    "lawyer",
    "carpenter",
    "dentist",
    "farmer",
    "architect",
    "librarian",
    "mechanic",
    "journalist",
    "electrician",
    "pharmacist",
    "surveyor",
    "tailor",
]
TEMPLATES = [
    "{name}, {age}, lives in {city} and works as a {job}.",
    "Meet {name} from {city}: a {age}-year-old {job}.",
    "{city} is home to {name}, who is {age} and works as a {job}.",
    "At {age}, {name} is a {job} based in {city}.",
    "Our new {job}, {name} ({age}), is moving to {city}.",
    "{name} ({job}, {age}) has lived in {city} for years.",
    "The {job} {name} turned {age} last week in {city}.",
    "Born {age} years ago, {name} now works in {city} as a {job}.",
]


def extraction_records(n: int, seed: int) -> list[dict]:
    """n instruction records {instruction, input, output} of the field-extraction task."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        fields = {
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "age": rng.randint(19, 79),
            "city": rng.choice(CITIES),
            "job": rng.choice(JOBS),
        }
        records.append(
            {
                "instruction": INSTRUCTION,
                "input": rng.choice(TEMPLATES).format(**fields),
                "output": "{name} | {age} | {city} | {job}".format(**fields),
            }
        )
    return records
