"""Reward model (task.type=reward): a scalar head on the last real token of the model with
cfg.method applied (LoRA by default), trained on preference pairs with the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected - margin).

Saved in output.dir: the method's adapter (PEFT layout) and the head (reward_head.safetensors), so
`load_reward_model(output.dir)` (and `tunesmith score`) rebuild the scorer. `tunesmith merge` of
such a directory writes a transformers sequence-classification model (`export_merged`), and
`load_reward_scorer` reads either kind, or one trained elsewhere (e.g. TRL's RewardTrainer).

A reward model reads prompt + response as it was trained on them: a tunesmith run as a pair's row
is encoded (data.preference.encode_response, ending in EOS); another sequence-classification
model with the tokenizer's chat template over the whole conversation, as TRL renders it.
"""

import json
import logging
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config.schema import RunConfig
from ..data.preference import collate_pairs, encode_response
from ..errors import CheckpointError
from ..methods import apply_method
from ..methods.base import adapter_configs, record_adapter
from ..methods.io import load_adapter, save_adapter
from ..models import load_base_model
from ..models.frozen_weights import weights_for_training
from ..models.heads import SequenceClassifier
from ..models.loading import load_configured_model
from ..models.sequence_classification import (
    is_sequence_classification_dir,
    load_sequence_classifier,
    to_sequence_classification,
)
from ..objectives.preference import reward_loss
from ..training import Objective
from ..utils.distributed import is_main_process
from ..utils.files import atomic_path
from .common import log_parameters, write_outputs
from .preference_common import held_out_means, load_preference_splits, start_run, train_and_report

log = logging.getLogger(__name__)
HEAD_FILE = "reward_head.safetensors"
# Written next to a merged reward model: how that model reads prompt + response.
RENDERING_FILE = "tunesmith_reward.json"


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Train the reward model; metrics.json has `accuracy` (held-out pairwise accuracy) and
    `margin` (mean r_chosen - r_rejected) of the held-out split."""
    start_run(cfg)
    model, tokenizer = build_reward_model(cfg)
    splits = load_preference_splits(cfg.data, tokenizer, cfg.train.seed)
    pad = tokenizer.pad_token_id
    objective = Objective(
        partial(collate_pairs, pad_id=pad),
        partial(pair_loss, cfg=cfg),
        splittable=True,
        uses_starting_weights=False,
    )
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
    lm, tokenizer = load_configured_model(cfg.model)
    apply_method(lm, cfg.method)
    model = SequenceClassifier(lm, 1, "last", bias=False)  # as transformers' `score`
    _share_adapter_record(model, lm)
    weights_for_training(model, cfg.model.dtype, cfg.train.precision)
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
    if not is_main_process():  # under torchrun, rank 0 alone writes the run's files
        return
    save_adapter(model.lm, out_dir, base_model=base_model)
    head = {"weight": model.head.weight.detach().float().contiguous()}
    if model.head.bias is not None:
        head["bias"] = model.head.bias.detach().float().contiguous()
    with atomic_path(Path(out_dir) / HEAD_FILE) as tmp:
        save_file(head, str(tmp), metadata={"format": "pt"})


def load_reward_model(run_dir, model_name: Optional[str] = None, dtype: str = "float32"):
    """(reward model in eval mode, tokenizer) from a reward run's output.dir (model_name defaults
    to the base recorded with the adapter) or from a transformers sequence-classification directory
    (e.g. a merged reward run, or TRL's RewardTrainer output, plain or as a PEFT adapter). Either
    is called as model(input_ids, attention_mask) -> rewards (B, 1). Raises CheckpointError for a
    directory that is neither."""
    run_dir = Path(run_dir)
    path = run_dir / HEAD_FILE
    if not path.is_file():
        if is_sequence_classification_dir(run_dir):
            return load_sequence_classifier(run_dir, dtype, base_model=model_name)
        raise CheckpointError(
            f"{run_dir} is not a reward model: neither {HEAD_FILE} (train one with "
            f"task.type=reward) nor a transformers sequence-classification model is there"
        )
    head = _read_head(path)
    lm, tokenizer = load_base_model(model_name or "default", dtype)
    load_adapter(lm, str(run_dir))
    model = SequenceClassifier(lm, 1, "last", bias="bias" in head)
    if not set(head) <= {"weight", "bias"} or tuple(head["weight"].shape) != tuple(
        model.head.weight.shape
    ):
        raise CheckpointError(
            f"{path} does not fit {model_name or 'default'}: expected weight "
            f"{tuple(model.head.weight.shape)}; was it trained on another model?"
        )
    with torch.no_grad():
        for name, tensor in head.items():
            getattr(model.head, name).copy_(tensor)
    return model.eval(), tokenizer


def _read_head(path: Path) -> dict:
    try:
        head = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); train the reward model again") from None
    if "weight" not in head:
        raise CheckpointError(f"{path} holds no head weight; train the reward model again")
    return head


def export_merged(lm, tokenizer, run_dir, out: Path) -> None:
    """Write a reward run whose adapter is merged into `lm` as a transformers sequence-
    classification model (num_labels=1, `score` = the reward head) with its tokenizer, plus how
    it renders prompt + response (RENDERING_FILE). Raises CheckpointError for a head with a
    non-zero bias, which transformers' bias-free `score` cannot hold."""
    head = _read_head(Path(run_dir) / HEAD_FILE)
    if "bias" in head and bool(head["bias"].abs().max() > 0):
        raise CheckpointError(
            f"{Path(run_dir) / HEAD_FILE} has a bias ({float(head['bias'][0]):.4g}), which a "
            f"transformers sequence-classification `score` has not; train the reward model again "
            f"(reward heads are now bias-free)"
        )
    model, tokenizer = to_sequence_classification(lm, head["weight"].to(lm.dtype), tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {"rendering": "tunesmith", "system_prompt": _run_system_prompt(Path(run_dir))}
    (Path(out) / RENDERING_FILE).write_text(json.dumps(marker, indent=2))


def is_reward_run(adapter_dir) -> bool:
    """True when adapter_dir holds a tunesmith reward head next to its adapter."""
    return (Path(adapter_dir) / HEAD_FILE).is_file()


class RewardScorer:
    """scorer(prompts, completions, **fields) -> rewards (list of floats), TRL's reward-function
    call; `model`, `tokenizer` and `encode(prompt, completion) -> token ids` are kept."""

    def __init__(self, model, tokenizer, encode: Callable, batch_size: int = 8):
        self.model, self.tokenizer, self.encode, self.batch_size = (
            model,
            tokenizer,
            encode,
            batch_size,
        )

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **fields) -> list[float]:
        rows = [self.encode(p, c) for p, c in zip(prompts, completions)]
        rewards = []
        for start in range(0, len(rows), self.batch_size):
            batch = _pad_right(rows[start : start + self.batch_size], self.tokenizer.pad_token_id)
            rewards += self.model(**batch)[:, 0].tolist()
        return rewards


def load_reward_scorer(path, model_name: Optional[str] = None, dtype: str = "float32"):
    """RewardScorer of a reward run's output.dir (on base `model_name`, default: the recorded one)
    or of a sequence-classification directory, reading texts as that model was trained to.
    Raises CheckpointError for a directory that is neither."""
    path = Path(path)
    model, tokenizer = load_reward_model(path, model_name, dtype)
    rendering = {"rendering": "chat_template", "system_prompt": None}
    if is_reward_run(path):
        rendering = {"rendering": "tunesmith", "system_prompt": _run_system_prompt(path)}
    elif (path / RENDERING_FILE).is_file():
        rendering = json.loads((path / RENDERING_FILE).read_text())
    encode = (_tunesmith_encoding if rendering["rendering"] == "tunesmith" else _chat_encoding)(
        tokenizer, rendering.get("system_prompt")
    )
    return RewardScorer(model, tokenizer, encode)


def score(
    model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8
) -> list[float]:
    """The reward of each (prompt, response) by a tunesmith reward model, the texts encoded as
    its training pairs were."""
    return RewardScorer(model, tokenizer, _tunesmith_encoding(tokenizer), batch_size)(
        prompts, responses
    )


def _tunesmith_encoding(tokenizer, system_prompt: Optional[str] = None) -> Callable:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def encode(prompt: str, completion: str) -> list[int]:
        return encode_response(
            tokenizer, system + [{"role": "user", "content": prompt}], completion
        )

    return encode


def _chat_encoding(tokenizer, system_prompt: Optional[str] = None) -> Callable:
    # TRL's RewardTrainer: the chat template over prompt + answer (conversational data), else the
    # plain text + EOS
    def encode(prompt: str, completion: str) -> list[int]:
        if not getattr(tokenizer, "chat_template", None):
            return tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]

    return encode


def _pad_right(rows: list[list[int]], pad_id: int) -> dict:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _run_system_prompt(run_dir: Path) -> Optional[str]:
    # data.system_prompt of the run (output.dir, or its parent for best/), from its saved config
    import yaml

    for d in (run_dir, run_dir.parent):
        if (d / "config.yaml").is_file():
            data = (yaml.safe_load((d / "config.yaml").read_text()) or {}).get("data") or {}
            return data.get("system_prompt")
    return None


def _share_adapter_record(model, lm) -> None:
    # The loop reads the methods from the model it trains (for their step hooks and reports).
    for name, method_cfg in adapter_configs(lm).items():
        record_adapter(model, name, method_cfg)
