"""Generation metrics: exact match and contains, on normalised text."""
import re


def normalize(text: str) -> str:
    """Lower-case, trim and collapse whitespace (so trailing newlines do not count as errors)."""
    return re.sub(r"\s+", " ", text.strip().lower())


def exact_match(predictions: list[str], references: list[str]) -> float:
    pairs = list(zip(predictions, references, strict=True))
    return sum(normalize(p) == normalize(r) for p, r in pairs) / max(len(pairs), 1)


def contains_match(predictions: list[str], references: list[str]) -> float:
    pairs = list(zip(predictions, references, strict=True))
    return sum(normalize(r) in normalize(p) for p, r in pairs) / max(len(pairs), 1)
