"""A micro-batch too large for one forward/backward pass runs as several: same update, less memory.

The loop back-propagates each batch's loss times its term count and divides the summed gradients
by all the terms of the update, so cutting a micro-batch's examples into consecutive chunks gives
the update of the whole micro-batch (up to float rounding) with the activations of one chunk.
Objectives whose loss couples the examples of a batch (KTO's batch KL estimate, PPO's advantage
whitening) do not declare `Objective.splittable` and always run whole.

Off by default (train.tokens_per_pass: 0), by measurement on SmolLM2-135M, one core: LoRA SFT on
packed rows of 4 x 256 tokens kept its peak RSS in passes of 512 tokens and ran 18 % slower; LoRA
DPO (4 pairs, ~780 padded tokens) in passes of 512 tokens peaked 90 MB lower without activation
checkpointing, and with checkpointing (the dpo default) 21 MB higher and 5 % slower. It is for
micro-batches far larger than these, where one pass would not fit.
"""

import math

import torch


def passes_needed(padded_tokens: int, examples: int, tokens_per_pass: int) -> int:
    """How many chunks a micro-batch of `examples` examples and `padded_tokens` tokens runs in
    (tokens_per_pass 0: one)."""
    if tokens_per_pass <= 0 or padded_tokens <= tokens_per_pass:
        return 1
    return min(examples, math.ceil(padded_tokens / tokens_per_pass))


def split_examples(indices: list, passes: int) -> list[list]:
    """`indices` cut into `passes` consecutive chunks of near-equal size, none empty."""
    size, extra = divmod(len(indices), passes)
    chunks, start = [], 0
    for i in range(passes):
        end = start + size + (1 if i < extra else 0)
        chunks.append(list(indices[start:end]))
        start = end
    return chunks


def collated_passes(objective, examples: list, indices: list[int], tokens_per_pass: int, par):
    """The collated batches the micro-batch of `indices` runs as: itself, or consecutive chunks of
    it when it holds more padded tokens than tokens_per_pass. Under torchrun every rank takes the
    largest count of any rank, so all run the same number of backward passes."""
    batch = objective.collate([examples[i] for i in indices])
    if tokens_per_pass <= 0:  # the same setting on every rank: no need to agree on a count
        return [batch]
    ids = batch.get("input_ids")
    padded = ids.numel() if isinstance(ids, torch.Tensor) else 0
    count = passes_needed(padded, len(indices), tokens_per_pass)
    if par.world > 1:  # ranks' slices differ by one example at most: no empty chunk
        counts, sizes = zip(*par.gather((count, len(indices))))
        count = max(1, min(max(counts), min(sizes)))
    if count == 1:
        return [batch]
    chunks = split_examples(indices, count)
    return [objective.collate([examples[i] for i in chunk]) for chunk in chunks]
