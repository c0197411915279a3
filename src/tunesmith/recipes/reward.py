"""Reward model (task.type=reward): a scalar head on the last real token of the model with
cfg.method applied (LoRA by default), trained on preference pairs with the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected - margin).

Saved in output.dir: the method's adapter (PEFT layout) and the head (reward_head.safetensors), so
`load_reward_model(output.dir)` (and `tunesmith score`) rebuild the scorer.
"""

import logging
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config.schema import RunConfig
from ..data.preference import collate_pairs
from ..data.templates import render
from ..errors import CheckpointError
from ..methods import apply_method
from ..methods.base import adapter_configs, record_adapter
from ..methods.io import load_adapter, save_adapter
from ..models import load_base_model
from ..models.heads import SequenceClassifier
from ..objectives.preference import reward_loss
from ..training import Objective
from ..utils.files import atomic_path
from .common import log_parameters, write_outputs
from .preference_common import held_out_means, load_preference_splits, start_run, train_and_report

log = logging.getLogger(__name__)
HEAD_FILE = "reward_head.safetensors"


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Train the reward model; metrics.json has `accuracy` (held-out pairwise accuracy) and
    `margin` (mean r_chosen - r_rejected) of the held-out split."""
    start_run(cfg)
    model, tokenizer = build_reward_model(cfg)
    splits = load_preference_splits(cfg.data, tokenizer, cfg.train.seed)
    pad = tokenizer.pad_token_id
    objective = Objective(partial(collate_pairs, pad_id=pad), partial(pair_loss, cfg=cfg))
    return train_and_report(
        cfg,
        model,
        splits,
        objective,
        held_out=lambda part: pairwise_metrics(model, part, cfg, pad),
        save=lambda d: save_reward_model(model, d, cfg.model.name),
        progress=progress,
    )


def evaluate(cfg: RunConfig, split: str = "test") -> dict:
    """Pairwise accuracy and margin of the reward model in output.dir on `split` of cfg.data."""
    model, tokenizer = load_reward_model(cfg.output.dir, cfg.model.name)
    splits = load_preference_splits(cfg.data, tokenizer, cfg.train.seed)
    pairs = {"test": splits.test, "eval": splits.eval, "train": splits.train}[split]
    metrics = {"split": split, **pairwise_metrics(model, pairs, cfg, tokenizer.pad_token_id)}
    write_outputs(Path(cfg.output.dir), cfg, metrics, [])
    return metrics


def build_reward_model(cfg: RunConfig):
    """(SequenceClassifier with one output and cfg.method applied to its language model, tokenizer)."""
    lm, tokenizer = load_base_model(
        cfg.model.name, cfg.model.dtype, cfg.model.quantize, cfg.model.quant_block_size
    )
    apply_method(lm, cfg.method)
    model = SequenceClassifier(lm, 1, "last")
    _share_adapter_record(model, lm)
    log_parameters(model, f"reward model ({cfg.method.name} + scalar head)")
    return model, tokenizer


def pair_loss(model, batch: dict, cfg: RunConfig):
    """(Bradley-Terry loss over the pairs, number of pairs, accuracy and margin) of a batch whose
    rows 0..B-1 are the chosen answers and B..2B-1 the rejected ones."""
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[
        :, 0
    ]  # (2B,)
    n = rewards.shape[0] // 2
    chosen, rejected = rewards[:n], rewards[n:]
    loss = reward_loss(chosen, rejected, batch.get("margin"), cfg.reward.center_coefficient)
    diff = (chosen - rejected).detach()
    return loss, n, {"accuracy": float((diff > 0).float().mean()), "margin": float(diff.mean())}


def pairwise_metrics(model, pairs: list, cfg: RunConfig, pad_id: int) -> dict:
    """Mean loss, pairwise accuracy and margin over `pairs`."""
    return held_out_means(model, pairs, cfg, partial(collate_pairs, pad_id=pad_id), pair_loss)


def save_reward_model(model: SequenceClassifier, out_dir: Path, base_model: str) -> None:
    save_adapter(model.lm, out_dir, base_model=base_model)
    head = {
        "weight": model.head.weight.detach().float().contiguous(),
        "bias": model.head.bias.detach().float().contiguous(),
    }
    with atomic_path(Path(out_dir) / HEAD_FILE) as tmp:
        save_file(head, str(tmp), metadata={"format": "pt"})


def load_reward_model(run_dir, model_name: Optional[str] = None, dtype: str = "float32"):
    """(reward model in eval mode, tokenizer) from a reward run's output.dir; model_name defaults
    to the base recorded with the adapter. Raises CheckpointError for a directory that is not one."""
    run_dir = Path(run_dir)
    path = run_dir / HEAD_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} is not a reward model: {HEAD_FILE} is missing (train one with "
            f"task.type=reward)"
        )
    try:
        head = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); train the reward model again") from None
    lm, tokenizer = load_base_model(model_name or "default", dtype)
    load_adapter(lm, str(run_dir))
    model = SequenceClassifier(lm, 1, "last")
    if set(head) != {"weight", "bias"} or tuple(head["weight"].shape) != tuple(
        model.head.weight.shape
    ):
        raise CheckpointError(
            f"{path} does not fit {model_name or 'default'}: expected weight "
            f"{tuple(model.head.weight.shape)} and bias; was it trained on another model?"
        )
    with torch.no_grad():
        model.head.weight.copy_(head["weight"])
        model.head.bias.copy_(head["bias"])
    return model.eval(), tokenizer


@torch.no_grad()
def score(
    model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8
) -> list[float]:
    """The reward of each (prompt, response): the conversation rendered with the chat template."""
    texts = [
        render(
            tokenizer,
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
            add_generation_prompt=False,
        )
        for p, r in zip(prompts, responses)
    ]
    rewards = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        rewards += model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[
            :, 0
        ].tolist()
    return rewards


def _share_adapter_record(model, lm) -> None:
    # The loop reads the methods from the model it trains (for their step hooks and reports).
    for name, method_cfg in adapter_configs(lm).items():
        record_adapter(model, name, method_cfg)
