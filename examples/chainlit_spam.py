"""The course's spam demo as a Chainlit chat on `tunesmith serve`: type a message, get back
"spam" or "not spam" with the classifier's probability. It talks to the server through the
official openai client (the server's /v1/classify endpoint), so it runs anywhere the server is
reachable.

    tunesmith train examples/sms_head.yaml                       # the classifier run
    tunesmith serve --model default --adapter spam=runs/sms_head  # -> serving on http://127.0.0.1:8000
    pip install 'tunesmith[chainlit]'
    chainlit run examples/chainlit_spam.py --port 8001            # the chat on http://localhost:8001

Settings (environment): TUNESMITH_URL (default http://127.0.0.1:8000/v1), TUNESMITH_MODEL (the
classifier's name on the server, default "spam"), TUNESMITH_API_KEY (when the server has one).
"""

import os

import chainlit as cl
from openai import AsyncOpenAI, OpenAIError

client = AsyncOpenAI(
    base_url=os.environ.get("TUNESMITH_URL", "http://127.0.0.1:8000/v1"),
    api_key=os.environ.get("TUNESMITH_API_KEY", "none"),
    max_retries=1,
)
MODEL = os.environ.get("TUNESMITH_MODEL", "spam")


async def verdict(text: str) -> str:
    """ "spam" or "not spam" and the probability, as the course's app answers."""
    result = await client.post("/classify", cast_to=object, body={"model": MODEL, "input": text})
    best = result["data"][0]
    label = "spam" if best["label"] == "spam" else "not spam"
    return f"{label} ({best['probability']:.1%})"


@cl.on_message
async def main(message: cl.Message) -> None:
    try:
        answer = await verdict(message.content)
    except OpenAIError as e:  # the server's own message: unknown model, server not running, ...
        answer = f"the classifier could not answer: {e}"
    await cl.Message(content=answer).send()
