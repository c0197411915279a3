"""Rollouts: the policy answers a batch of prompts by sampling, and the answers become a training
batch (prompt + response, right-padded, the response labelled) for log-probs, values and losses."""

from dataclasses import dataclass

import torch

from ..data.encode import IGNORE


@dataclass
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class Rollout:
    """B sampled answers. Rows are [prompt, response, padding]: positions count from 0 in every row,
    as they did while sampling from the left-padded prompts, so log-probs match the sampler's."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T): the response tokens (EOS included), IGNORE elsewhere
    ended: torch.Tensor  # (B,) bool: the response ended with EOS within max_new_tokens
    records: list  # the PromptRecord of each row
    texts: list  # each response decoded, special tokens skipped

    @property
    def response_lengths(self) -> torch.Tensor:
        return (self.labels != IGNORE).sum(1)

    def batch(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
        }


@torch.no_grad()
def sample(model, tokenizer, prompts: dict, sampling: Sampling, repeats: int = 1) -> Rollout:
    """Sampled answers to the left-padded `prompts` (data.prompts.collate_prompts), each prompt
    `repeats` times in a row (GRPO's groups). Uses the global torch RNG, which checkpoints keep,
    so a resumed run samples the same answers."""
    ids = prompts["input_ids"].repeat_interleave(repeats, 0)
    mask = prompts["attention_mask"].repeat_interleave(repeats, 0)
    records = [r for r in prompts["records"] for _ in range(repeats)]
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,  # no top-k cut unless asked: the distribution the loss assumes
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    finally:
        model.train(was_training)
    return build_rollout(ids, mask, out[:, ids.shape[1] :], records, tokenizer)


def build_rollout(prompt_ids, prompt_mask, new_tokens, records, tokenizer) -> Rollout:
    """The Rollout of generated `new_tokens` (B, R) after left-padded prompts (B, P): each
    response is cut after its first EOS (generate pads finished rows)."""
    eos = tokenizer.eos_token_id
    rows, ended = [], []
    for prompt, keep, new in zip(prompt_ids, prompt_mask, new_tokens):
        new = new.tolist()
        stop = new.index(eos) + 1 if eos in new else len(new)
        rows.append((prompt[keep.bool()].tolist(), new[:stop]))
        ended.append(eos in new)
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention[i, : len(p) + len(r)] = 1
        labels[i, len(p) : len(p) + len(r)] = torch.tensor(r, dtype=torch.long)
    texts = tokenizer.batch_decode([r for _, r in rows], skip_special_tokens=True)
    return Rollout(ids, attention, labels, torch.tensor(ended), records, texts)
