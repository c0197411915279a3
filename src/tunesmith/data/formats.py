"""Record formats -> a list of chat messages (or plain text), with the format detected from the fields.

- text:        {"text": ...}                                   (continued pre-training)
- instruction: {"instruction", optional "input", "output"}     (also {"prompt", "completion"})
- chat:        {"messages": [{"role", "content"}, ...]}
"""

from ..errors import DataError
from .readers import SOURCE

FORMAT_FIELDS = {"chat": ("messages",), "instruction": ("instruction", "output"), "text": ("text",)}
ROLES = ("system", "user", "assistant")


def detect_format(record: dict) -> str:
    if "messages" in record:
        return "chat"
    if "instruction" in record or ("prompt" in record and "completion" in record):
        return "instruction"
    if "text" in record:
        return "text"
    fields = ", ".join(k for k in record if k != SOURCE)
    raise DataError(
        f"{record[SOURCE]}: cannot tell the format from the fields ({fields}); expected "
        f"'text', 'instruction'+'output', 'prompt'+'completion' or 'messages' (or set data.format)"
    )


def to_messages(record: dict, fmt: str, system_prompt=None) -> list[dict]:
    """Chat messages of an instruction or chat record; the last message is the assistant's answer."""
    if fmt == "chat":
        messages = _check_messages(record)
    elif fmt == "instruction":
        messages = [
            {"role": "user", "content": instruction_prompt(record)},
            {"role": "assistant", "content": _field(record, "output", "completion")},
        ]
    else:
        raise DataError(f"{record[SOURCE]}: format {fmt!r} has no messages")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


def instruction_prompt(record: dict) -> str:
    """The user turn of an instruction record: the instruction, then the input when there is one."""
    instruction = _field(record, "instruction", "prompt")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise DataError(f"{record[SOURCE]}: field 'input' must be text, got {type(extra).__name__}")
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def plain_text(record: dict) -> str:
    return _field(record, "text", "text")


def _field(record: dict, name: str, alt: str) -> str:
    value = record.get(name, record.get(alt))
    if value is None:
        raise DataError(f"{record[SOURCE]}: missing field {name!r}")
    if not isinstance(value, str):
        raise DataError(
            f"{record[SOURCE]}: field {name!r} must be text, got {type(value).__name__}"
        )
    if name in ("output", "instruction", "text") and not value.strip():
        raise DataError(f"{record[SOURCE]}: field {name!r} is empty")
    return value


def _check_messages(record: dict) -> list[dict]:
    messages = record.get("messages")
    src = record[SOURCE]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{src}: 'messages' must be a non-empty list of {{role, content}} objects")
    check_roles(messages, src)
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"{src}: the last message must be the assistant's (it is what the model learns to say)"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_roles(messages: list, src: str) -> None:
    """Raise DataError unless every message is {'role': one of ROLES, 'content': text}."""
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(
                f"{src}: messages[{i}] must be {{'role': one of {ROLES}, 'content': text}}, got {m!r}"
            )
