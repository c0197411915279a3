"""Preference data: paired (chosen vs rejected) and unpaired (KTO) records, encoded and batched.

Paired record forms (any file data.readers reads):
- text:  {"prompt" | "instruction" (+ "input"), "chosen": str, "rejected": str, optional "margin"}
- chat:  {"chosen": [messages], "rejected": [messages]} sharing every message but the last
         (the assistant's answer); a "prompt" given as a message list goes in front of both.
Unpaired (KTO): {"prompt" | "instruction" (+ "input"), "completion": str | [assistant message],
"label": true/false}; a paired record read for KTO gives its chosen answer as desirable and its
rejected one as undesirable.

Encoding uses the SFT chat-template code (encode._segments), so a response is tokenised exactly as
SFT tokenises the answer, ending in EOS. Only the last answer carries labels; earlier turns and the
prompt are masked. Truncation keeps the end of the prompt, then cuts responses at the right.
A paired batch is one tensor of 2B rows, chosen first, so both sides share one forward pass.
"""

import logging
from dataclasses import dataclass

import torch

from ..errors import DataError
from .encode import IGNORE, _segments
from .formats import instruction_prompt, to_messages
from .readers import SOURCE, read_records

log = logging.getLogger(__name__)
TRUE, FALSE = ("true", "1", "yes", "desirable"), ("false", "0", "no", "undesirable")


@dataclass(frozen=True)
class PreferencePair:
    prompt_messages: list  # [{"role", "content"}, ...], ending in the user's turn
    chosen: str
    rejected: str
    margin: float | None = None
    source: str = ""


@dataclass(frozen=True)
class KtoExample:
    prompt_messages: list
    completion: str
    desirable: bool
    source: str = ""


@dataclass
class PairStats:
    total: int = 0
    truncated: int = 0  # pairs that lost any token
    prompt_cut: int = 0  # pairs whose prompt lost its start
    response_cut: int = 0  # pairs with a response cut at the end

    def describe(self) -> str:
        return (
            f"{self.total} pairs, {self.truncated} truncated ({self.prompt_cut} prompts cut at the start, "
            f"{self.response_cut} with a response cut at the end)"
        )


def read_preference(path, file_type: str = "auto", system_prompt=None) -> list[PreferencePair]:
    """PreferencePairs of a data file. Pairs whose chosen equals rejected are dropped (logged).

    Raises DataError (`file:line: ...`) for a record without chosen/rejected, a chat pair whose
    prompts differ or a non-numeric margin, and when no pair is left.
    """
    records = read_records(path, file_type)
    pairs = [record_to_pair(r, system_prompt) for r in records]
    same = [p for p in pairs if p.chosen == p.rejected]
    if same:
        log.warning(
            "%d of %d preference records have chosen identical to rejected and were dropped (first at %s)",
            len(same),
            len(pairs),
            same[0].source,
        )
    pairs = [p for p in pairs if p.chosen != p.rejected]
    if not pairs:
        raise DataError(
            f"{path}: no usable preference pairs ({len(records)} records, {len(same)} with chosen "
            f"identical to rejected)"
        )
    return pairs


def record_to_pair(record: dict, system_prompt=None) -> PreferencePair:
    src = record[SOURCE]
    for name in ("chosen", "rejected"):
        if record.get(name) is None:
            have = ", ".join(k for k in record if k != SOURCE)
            raise DataError(
                f"{src}: missing field {name!r}; a preference record needs 'chosen' and 'rejected' "
                f"(the record has: {have})"
            )
    chosen = _conversation(record, "chosen", system_prompt)
    rejected = _conversation(record, "rejected", system_prompt)
    if chosen[:-1] != rejected[:-1]:
        raise DataError(
            f"{src}: 'chosen' and 'rejected' must share every message but the last (the assistant's "
            f"answer); they differ earlier"
        )
    if not chosen[:-1]:
        raise DataError(
            f"{src}: no prompt; give 'prompt' (or 'instruction'), or user messages before the answer"
        )
    return PreferencePair(
        chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], _margin(record), src
    )


def _conversation(record: dict, name: str, system_prompt) -> list[dict]:
    """Prompt messages + the answer in `record[name]`, checked by the SFT chat-format rules."""
    src, answer = record[SOURCE], record[name]
    if isinstance(answer, str):
        answer = [{"role": "assistant", "content": answer}]
    elif not isinstance(answer, list):
        raise DataError(
            f"{src}: field {name!r} must be text or a list of messages, got {type(answer).__name__}"
        )
    messages = _prompt_messages(record) + answer
    return to_messages({"messages": messages, SOURCE: src}, "chat", system_prompt)


def _prompt_messages(record: dict) -> list[dict]:
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        return prompt
    if prompt is None and "instruction" not in record:
        return []  # chat form: the prompt is the shared prefix of chosen and rejected
    return [{"role": "user", "content": instruction_prompt(record)}]


def _margin(record: dict) -> float | None:
    value = record.get("margin")
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{record[SOURCE]}: field 'margin' must be a number, got {value!r}"
        ) from None


def read_kto(path, file_type: str = "auto", system_prompt=None) -> list[KtoExample]:
    """KtoExamples of a data file. A paired record (chosen, rejected, no completion) gives two:
    its chosen answer as desirable and its rejected one as undesirable (TRL's unpairing), so
    preference files train KTO as they are. Raises DataError (`file:line: ...`) for a missing or
    non-boolean label or a missing completion, and when the file holds no example."""
    out = []
    for r in read_records(path, file_type):
        if r.get("completion") is None and "chosen" in r and "rejected" in r:
            pair = record_to_pair(r, system_prompt)
            out.append(KtoExample(pair.prompt_messages, pair.chosen, True, pair.source))
            out.append(KtoExample(pair.prompt_messages, pair.rejected, False, pair.source))
        else:
            out.append(_kto_example(r, system_prompt))
    return out


def _kto_example(r: dict, system_prompt) -> KtoExample:
    src = r[SOURCE]
    if r.get("completion") is None:
        raise DataError(
            f"{src}: missing field 'completion' (an unpaired KTO record has prompt, completion, "
            f"label; a paired one chosen and rejected)"
        )
    messages = _conversation(r, "completion", system_prompt)
    if len(messages) < 2:
        raise DataError(
            f"{src}: no prompt; give 'prompt' (or 'instruction'), or user messages before the answer"
        )
    return KtoExample(messages[:-1], messages[-1]["content"], _label(r), src)


def _label(record: dict) -> bool:
    value = record.get("label")
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if value is None or text not in TRUE + FALSE:
        raise DataError(
            f"{record[SOURCE]}: field 'label' must be true (desirable) or false (undesirable), "
            f"got {value!r}"
        )
    return text in TRUE


def encode_pair(
    pair: PreferencePair, tokenizer, max_length: int, stats: PairStats | None = None
) -> dict:
    """Token ids of one pair: prompt_ids, chosen_ids, rejected_ids (the responses alone, ending in
    EOS), and the full rows chosen_input_ids/chosen_labels, rejected_input_ids/rejected_labels with
    the prompt labelled IGNORE. Longer than max_length: the prompt keeps its end (at least half of
    max_length when responses are long), then responses are cut at the end; `stats` counts the cuts.
    """
    prompt, chosen = _prompt_and_answer(tokenizer, pair.prompt_messages, pair.chosen, pair.source)
    _, rejected = _prompt_and_answer(tokenizer, pair.prompt_messages, pair.rejected, pair.source)
    prompt, (chosen, rejected), cut = _truncate(prompt, [chosen, rejected], max_length)
    if stats is not None:
        stats.total += 1
        stats.truncated += bool(cut[0] or cut[1])
        stats.prompt_cut += cut[0]
        stats.response_cut += cut[1]
    out = {
        "prompt_ids": prompt,
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "margin": pair.margin,
    }
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        out[f"{name}_input_ids"] = prompt + response
        out[f"{name}_labels"] = [IGNORE] * len(prompt) + response
    return out


def encode_pairs(pairs: list, tokenizer, max_length: int) -> tuple[list[dict], PairStats]:
    """encode_pair over `pairs`, with one warning when any pair was truncated."""
    stats = PairStats()
    encoded = [encode_pair(p, tokenizer, max_length, stats) for p in pairs]
    if stats.truncated:
        log.warning(
            "%d of %d preference pairs were longer than data.max_length=%d and were truncated "
            "(%d prompts cut at the start, %d responses cut at the end)",
            stats.truncated,
            stats.total,
            max_length,
            stats.prompt_cut,
            stats.response_cut,
        )
    return encoded, stats


def encode_response(tokenizer, prompt_messages: list, answer: str) -> list[int]:
    """Token ids of prompt + answer exactly as a pair's row is encoded (the answer ends in EOS),
    untruncated: what a reward model trained on pairs reads."""
    prompt, response = _prompt_and_answer(tokenizer, prompt_messages, answer, "")
    return prompt + response


def _prompt_and_answer(
    tokenizer, prompt_messages: list, answer: str, source: str
) -> tuple[list, list]:
    # The SFT segmentation: every piece but the last answer is prompt (earlier answers included).
    messages = prompt_messages + [{"role": "assistant", "content": answer}]
    pieces = [
        tokenizer(text, add_special_tokens=False)["input_ids"]
        for text, _ in _segments(tokenizer, messages, source)
    ]
    return [i for piece in pieces[:-1] for i in piece], pieces[-1]


def _truncate(
    prompt: list, responses: list, max_length: int
) -> tuple[list, list, tuple[bool, bool]]:
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= max_length:
        return prompt, responses, (False, False)
    keep = min(len(prompt), max(max_length - longest, max_length // 2))
    prompt_cut = keep < len(prompt)
    prompt = prompt[len(prompt) - keep :]  # keep the end: the question sits next to the answer
    room = max_length - len(prompt)
    return prompt, [r[:room] for r in responses], (prompt_cut, longest > room)


def collate_pairs(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B rows, [chosen_1..chosen_B, rejected_1..rejected_B], padded right: input_ids,
    attention_mask, labels (IGNORE on prompt and padding), and margin (B,) when every pair has one."""
    rows = [(e["chosen_input_ids"], e["chosen_labels"]) for e in examples]
    rows += [(e["rejected_input_ids"], e["rejected_labels"]) for e in examples]
    batch = _pad(rows, pad_id)
    if all(e.get("margin") is not None for e in examples):
        batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float32)
    return batch


def encode_kto(example: KtoExample, tokenizer, max_length: int) -> dict:
    """input_ids and labels (prompt IGNORE) of one unpaired example, truncated as encode_pair does."""
    prompt, answer = _prompt_and_answer(
        tokenizer, example.prompt_messages, example.completion, example.source
    )
    prompt, (answer,), _ = _truncate(prompt, [answer], max_length)
    return {
        "prompt_ids": prompt,
        "completion_ids": answer,
        "input_ids": prompt + answer,
        "labels": [IGNORE] * len(prompt) + answer,
        "desirable": example.desirable,
    }


def kl_mismatched(encoded: list[dict]) -> list[dict]:
    """KTO's KL pairs for one batch: prompt i with completion i-1 (TRL's rotation by one), so the
    mismatched completions are the batch's own, paired with other prompts."""
    shifted = [encoded[-1]] + encoded[:-1]
    return [
        {
            "input_ids": e["prompt_ids"] + s["completion_ids"],
            "labels": [IGNORE] * len(e["prompt_ids"]) + s["completion_ids"],
        }
        for e, s in zip(encoded, shifted)
    ]


def collate_kto(examples: list[dict], pad_id: int, with_kl: bool = True) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels, desirable (B,) bool; with_kl adds kl_input_ids,
    kl_attention_mask, kl_labels for the mismatched pairs of the same batch."""
    batch = _pad([(e["input_ids"], e["labels"]) for e in examples], pad_id)
    batch["desirable"] = torch.tensor([e["desirable"] for e in examples], dtype=torch.bool)
    if with_kl:
        kl = _pad([(e["input_ids"], e["labels"]) for e in kl_mismatched(examples)], pad_id)
        batch.update({f"kl_{k}": v for k, v in kl.items()})
    return batch


def _pad(rows: list, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (R, W)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
