"""Sequence packing: several examples per row, each attending only to itself.

A packed row concatenates examples; `position_ids` restart at 0 at each example. transformers (5.x)
turns restarting position_ids, given with attention_mask=None, into a block-diagonal causal mask
(`masking_utils.find_packed_sequence_indices`), for sdpa, eager and flex attention alike, so no
token sees another example. The first label of every example is IGNORE: unpacked, nothing
predicts it, and packed it would be predicted from the previous example's last token.
"""

from functools import partial

import torch

from ..errors import ConfigError, DataError
from .encode import IGNORE, Example


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows of total length <= capacity (first-fit decreasing).

    An item longer than `capacity` gets a row of its own. Rows keep items in input order.
    """
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return [sorted(row) for row in sorted(rows, key=min)]


def collate_packed(
    examples: list[Example], pad_id: int, max_length: int
) -> dict[str, torch.Tensor]:
    """Pack `examples` into rows of at most max_length tokens, padded (right) to the longest row.

    Returns input_ids, labels, position_ids and attention_mask (1 on real tokens, for counting;
    the model must get attention_mask=None and the position_ids: objectives.sft.causal_lm_loss
    does that when given position_ids).
    """
    if any(e.task_id is not None for e in examples):
        raise DataError(
            "data.packing puts examples of different tasks in one row, but the data has task ids "
            "(data.task_field): set data.packing=false"
        )
    rows = pack_rows([len(e.input_ids) for e in examples], max_length)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(examples[i].input_ids)
            input_ids[r, start : start + n] = torch.tensor(examples[i].input_ids)
            labels[r, start + 1 : start + n] = torch.tensor(examples[i].labels[1:])
            position_ids[r, start : start + n] = torch.arange(n)
            attention_mask[r, start : start + n] = 1
            start += n
        position_ids[r, start:] = torch.arange(
            width - start
        )  # the padding tail is a block of its own
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "position_ids": position_ids,
    }


def batching(cfg, examples: list[Example], pad_id: int, prompt_based: bool = False) -> dict:
    """train() keyword arguments for data.packing / data.group_by_length: collate_fn and lengths.

    Raises ConfigError for packing with a prompt-based method: its virtual tokens are put in front
    of each row, not of each example.
    """
    if cfg.packing and prompt_based:
        raise ConfigError(
            "data.packing=true does not work with prompt-based methods (prompt/prefix/p-tuning "
            "put virtual tokens in front of each row, not each example); set data.packing=false"
        )
    return {
        "collate_fn": partial(collate_packed, pad_id=pad_id, max_length=cfg.max_length)
        if cfg.packing
        else None,
        "lengths": [len(e.input_ids) for e in examples] if cfg.group_by_length else None,
    }
