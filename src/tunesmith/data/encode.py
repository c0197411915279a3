"""Turn records into token ids and labels: chat template, EOS, completion-only masking, truncation."""

import logging
from dataclasses import dataclass, field
from typing import Optional

from ..errors import DataError
from .formats import detect_format, plain_text, to_messages
from .readers import SOURCE
from .templates import render

log = logging.getLogger(__name__)
IGNORE = -100  # label value the loss skips


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    prompt_messages: list = field(default_factory=list)  # for generation-based evaluation
    reference: str = ""
    task_id: Optional[int] = None  # from data.task_field, for multitask methods


@dataclass
class EncodeStats:
    total: int = 0
    truncated: int = 0
    dropped: int = 0  # nothing left to learn from after truncation

    def describe(self) -> str:
        return f"{self.total} examples, {self.truncated} truncated, {self.dropped} dropped (no target tokens left)"


def encode_records(
    records: list[dict],
    tokenizer,
    fmt: str,
    max_length: int,
    completion_only: bool = True,
    system_prompt=None,
    task_field: Optional[str] = None,
) -> tuple[list[Example], EncodeStats]:
    """Encode every record; fmt 'auto' detects the format from the first record's fields.
    task_field: the field holding a record's task id (Example.task_id), when present."""
    if fmt == "auto":
        fmt = detect_format(records[0])
    stats, examples = EncodeStats(), []
    for record in records:
        ex = encode_record(record, tokenizer, fmt, completion_only, system_prompt)
        if task_field and record.get(task_field) is not None:
            ex.task_id = _task_id(record, task_field)
        stats.total += 1
        if len(ex.input_ids) > max_length:
            stats.truncated += 1
            ex.input_ids, ex.labels = ex.input_ids[:max_length], ex.labels[:max_length]
        if all(label == IGNORE for label in ex.labels[1:]):
            stats.dropped += 1
            continue
        examples.append(ex)
    if stats.truncated:
        log.warning(
            "%d of %d examples were longer than data.max_length=%d and were truncated",
            stats.truncated,
            stats.total,
            max_length,
        )
    return examples, stats


def encode_record(
    record: dict, tokenizer, fmt: str, completion_only: bool = True, system_prompt=None
) -> Example:
    if fmt == "text":
        ids = tokenizer(plain_text(record), add_special_tokens=True)["input_ids"] + _eos(tokenizer)
        return Example(ids, list(ids))
    messages = to_messages(record, fmt, system_prompt)
    ids, labels = [], []
    for text, trainable in _segments(tokenizer, messages, record[SOURCE]):
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if (trainable or not completion_only) else [IGNORE] * len(seg)
    return Example(ids, labels, prompt_messages=messages[:-1], reference=messages[-1]["content"])


def _segments(tokenizer, messages: list[dict], source: str):
    """Split the rendered conversation into (text, is_assistant_answer) pieces.

    Each assistant answer runs from the end of the generation prompt to its end-of-turn token
    (EOS for ChatML), so the model learns to stop; the template's trailing newline is not a target.
    """
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError(
                f"{source}: the chat template does not render turns as prefixes of each other; "
                f"use data.format=text or a model with a standard template"
            )
        answer = full[len(prompt) :].rstrip()
        eos = tokenizer.eos_token or ""
        if eos and not answer.endswith(eos):
            answer += eos
        yield prompt[len(done) :], False
        yield answer, True
        # What the template adds after the answer (e.g. "\n") falls into the next prompt segment.
        done = prompt + answer


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _task_id(record: dict, task_field: str) -> int:
    value = record[task_field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(
            f"{record.get(SOURCE, 'a record')}: {task_field}={value!r} is not a task id; give an "
            f"int >= 0 (or set data.task_field to the field that holds one)"
        )
    return value
