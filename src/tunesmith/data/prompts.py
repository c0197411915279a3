"""Prompts for on-policy tasks (PPO, GRPO): the model writes the answers, so only the prompt counts.

Any record with a prompt serves, so preference, instruction and chat files can all be used:
- {"prompt": str | [messages]}, or {"instruction", optional "input"} (an "output", "chosen", ...
  is kept as a field, not used as the answer);
- {"messages": [...]}: the conversation up to and including the last user turn.
Every other field of the record is kept in `fields`, for a reward function's keyword arguments.
"""

from dataclasses import dataclass, field

import torch

from ..errors import DataError
from .formats import check_roles, instruction_prompt
from .readers import SOURCE, read_records
from .templates import render


@dataclass(frozen=True)
class PromptRecord:
    messages: list  # [{"role", "content"}, ...] ending in the user's turn
    fields: dict = field(default_factory=dict)  # the record's other fields
    source: str = ""

    @property
    def text(self) -> str:
        """The last user turn: what a reward model or function is shown as the prompt."""
        return self.messages[-1]["content"]


def read_prompts(path, file_type: str = "auto", system_prompt=None) -> list[PromptRecord]:
    """PromptRecords of a data file. Raises DataError (`file:line: ...`) for a record without a
    prompt, and when the file holds none."""
    records = read_records(path, file_type)
    prompts = [record_to_prompt(r, system_prompt) for r in records]
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def record_to_prompt(record: dict, system_prompt=None) -> PromptRecord:
    src = record[SOURCE]
    messages = _messages(record)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    used = {"prompt", "instruction", "input", "messages", SOURCE}
    fields = {k: v for k, v in record.items() if k not in used}
    return PromptRecord(messages, fields, src)


def _messages(record: dict) -> list[dict]:
    src = record[SOURCE]
    prompt = record.get("prompt")
    if isinstance(prompt, str) or "instruction" in record:
        if isinstance(prompt, str) and not prompt.strip():
            raise DataError(f"{src}: field 'prompt' is empty")
        return [{"role": "user", "content": instruction_prompt(record)}]
    conversation = prompt if isinstance(prompt, list) else record.get("messages")
    if not isinstance(conversation, list):
        have = ", ".join(k for k in record if k != SOURCE)
        raise DataError(
            f"{src}: no prompt; give 'prompt', 'instruction' (+ 'input') or 'messages' "
            f"(the record has: {have})"
        )
    check_roles(conversation, src)
    users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
    if not users:
        raise DataError(f"{src}: the messages have no user turn to answer")
    return [{"role": m["role"], "content": m["content"]} for m in conversation[: users[-1] + 1]]


def encode_prompt(prompt: PromptRecord, tokenizer, max_length: int) -> dict:
    """{"prompt_ids": the chat-templated prompt up to the assistant's turn (its end kept when
    longer than max_length), "record": prompt}."""
    text = render(tokenizer, prompt.messages, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {"prompt_ids": ids[-max_length:], "record": prompt}


def collate_prompts(examples: list[dict], pad_id: int) -> dict:
    """Left-padded prompt ids (B, T) and mask, for generation, with the records."""
    width = max(len(e["prompt_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["prompt_ids"])
        ids[row, width - n :] = torch.tensor(e["prompt_ids"], dtype=torch.long)
        mask[row, width - n :] = 1
    return {"input_ids": ids, "attention_mask": mask, "records": [e["record"] for e in examples]}
