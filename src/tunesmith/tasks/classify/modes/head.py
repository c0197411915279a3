"""task.mode=head: head-based classification: a linear head on the model's last (decoder) or first (encoder) token,
trained with the part of the model task.trainable names (head only, top blocks, all, or a PEFT method).

When the lower blocks are frozen their output is computed once per training example and reused every
epoch (models.prefix_cache), which makes head-only and top-block training several times faster.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ....config.schema import RunConfig
from ....data.classification import LabelledSplits, class_weights
from ....errors import ConfigError
from ....methods.base import adapter_configs, record_adapter
from ....models.encoders import load_language_model
from ....models.frozen_weights import weights_for_training
from ....models.heads import SequenceClassifier
from ....models.prefix_cache import make_prefix
from ....objectives.classification import weighted_cross_entropy
from ....recipes.common import log_parameters
from .common import (
    autocast,
    cache_hidden,
    fit,
    length_batches,
    load_trained,
    pad_batch,
    pad_hidden,
    save_trained,
    set_trainable,
    validation,
)
from .registry import ModeSpec, register_mode

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    input_ids: list
    label: int
    hidden: Optional[torch.Tensor] = None  # (T, H) output of the frozen lower blocks, when cached


class HeadPredictor:
    """Class probabilities from a SequenceClassifier."""

    def __init__(self, model: SequenceClassifier, tokenizer, cfg: RunConfig, labels: list):
        self.model, self.tokenizer, self.cfg, self.labels = model, tokenizer, cfg, labels
        self.cached: dict = {}  # id(LabelledExample) -> Encoded with hidden (the training split)

    def encode(self, examples: list) -> list[Encoded]:
        index = {label: i for i, label in enumerate(self.labels)}
        out = []
        for e in examples:
            if id(e) in self.cached:
                out.append(self.cached[id(e)])
                continue
            pair = {"text_pair": e.pair} if e.pair is not None else {}
            ids = self.tokenizer(
                e.text, truncation=True, max_length=self.cfg.data.max_length, **pair
            )["input_ids"]
            out.append(Encoded(ids, index.get(e.label, -1)))
        return out

    @torch.no_grad()
    def predict_proba(self, examples: list) -> np.ndarray:
        encoded = self.encode(examples)
        self.model.eval()
        probs = np.zeros((len(encoded), len(self.labels)), dtype=np.float32)
        for idx in length_batches([len(e.input_ids) for e in encoded], self.cfg.eval.batch_size):
            with autocast(self.cfg):
                logits = self.model(
                    **collate([encoded[i] for i in idx], self.tokenizer.pad_token_id, labels=False)
                )
            probs[idx] = torch.softmax(logits.float(), -1).numpy()
        return probs


def collate(items: list[Encoded], pad_id: int, labels: bool = True) -> dict:
    ids, mask = pad_batch([e.input_ids for e in items], pad_id)
    batch = {"input_ids": ids, "attention_mask": mask}
    if all(e.hidden is not None for e in items):
        batch = {"hidden": pad_hidden([e.hidden for e in items]), "attention_mask": mask}
    if labels:
        batch["labels"] = torch.tensor([e.label for e in items])
    return batch


def build(cfg: RunConfig, labels: list):
    """(SequenceClassifier with task.trainable applied, tokenizer)."""
    if cfg.task.trainable == "none":
        raise ConfigError(
            "task.trainable=none would leave the classification head random; use head (head only), "
            "last_block, last_two_blocks, last_blocks, all or method"
        )
    lm, tokenizer = load_language_model(cfg.model.name, cfg.model.dtype, cfg.model.attention)
    set_trainable(lm, cfg, use_lm_head=False)
    model = SequenceClassifier(lm, len(labels), cfg.task.pooling)
    weights_for_training(model, cfg.model.dtype, cfg.train.precision)
    for name, method_cfg in adapter_configs(
        lm
    ).items():  # the loop runs method hooks on the model it trains
        record_adapter(model, name, method_cfg)
    log_parameters(model, f"head classifier ({cfg.task.trainable}, {model.pooling} token)")
    return model, tokenizer


def fit_head(cfg: RunConfig, splits: LabelledSplits, out: Path, progress: bool = False):
    """Train; returns (HeadPredictor, info) and saves the trained tensors in out."""
    model, tokenizer = build(cfg, splits.labels)
    predictor = HeadPredictor(model, tokenizer, cfg, splits.labels)
    train_set = predictor.encode(splits.train)
    start = time.perf_counter()
    cache_seconds = (
        _cache_frozen(model, train_set, cfg, tokenizer.pad_token_id)
        if cfg.task.cache_frozen
        else 0.0
    )
    predictor.cached = {id(e): enc for e, enc in zip(splits.train, train_set)}
    weight = (
        torch.tensor(class_weights(splits.train, splits.labels)) if cfg.task.class_weights else None
    )
    pad = tokenizer.pad_token_id

    def loss_fn(m, batch):
        return weighted_cross_entropy(
            m(batch.get("input_ids"), batch["attention_mask"], batch.get("hidden")),
            batch["labels"],
            weight,
            cfg.task.label_smoothing,
        )

    evaluate = validation(predictor, splits, cfg, weight)
    info = fit(
        model,
        train_set,
        cfg,
        out,
        loss_fn,
        lambda items: collate(items, pad),
        evaluate,
        progress,
        lengths=[len(e.input_ids) for e in train_set],
        lr_scale=head_lr_scale(cfg.task.head_lr_multiplier),
        labels=[e.label for e in splits.train],
    )
    save_trained(model, out)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info.update(
        train_seconds=round(time.perf_counter() - start, 1),
        cache_seconds=round(cache_seconds, 1),
        trainable_params=trainable,
        total_params=sum(p.numel() for p in model.parameters()),
    )
    return predictor, info


def head_lr_scale(multiplier: float):
    """lr_scale for the training loop: the head's parameters (head.*) get multiplier x train.lr."""
    return lambda name: multiplier if name.startswith("head.") else 1.0


def load_head(cfg: RunConfig, out: Path, labels: list) -> HeadPredictor:
    model, tokenizer = build(cfg, labels)
    load_trained(model, out)
    return HeadPredictor(model, tokenizer, cfg, labels)


def _cache_frozen(
    model: SequenceClassifier, train_set: list[Encoded], cfg: RunConfig, pad_id: int
) -> float:
    """Attach the checked frozen-prefix cache to model and fill each training example's hidden."""
    start = time.perf_counter()
    probe = pad_batch([e.input_ids for e in train_set[:4]], pad_id)
    model.prefix = make_prefix(model, model.backbone, probe)
    if model.prefix is None:
        return 0.0
    cache_hidden(model.prefix, train_set, cfg, pad_id)
    seconds = time.perf_counter() - start
    log.info(
        "cached the frozen blocks' output for %d training examples in %.1f s",
        len(train_set),
        seconds,
    )
    return seconds


# Measured on rt-polarity with SmolLM2-135M-Instruct (docs/classification.md, "Choosing the
# defaults"): LoRA on every linear layer beat training the top blocks by about 4 points.
DEFAULT_METHOD = {"name": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}
DEFAULTS = {
    "task": {"trainable": "method"},
    # Batches of similar length: ~1.9x the real tokens per second on rt-polarity (less padding),
    # same accuracy (docs/classification.md).
    "data": {"group_by_length": True},
    "train": {
        "lr": 1e-3,
        "epochs": 1.0,
        "batch_size": 16,
        "warmup_steps": 20,
        "scheduler": "cosine",
        "weight_decay": 0.1,
        "keep_best": True,
        "best_metric": "eval_accuracy",
    },
}


def head_defaults(raw: dict) -> dict:
    """DEFAULTS, and LoRA's measured settings (DEFAULT_METHOD) for the keys a config leaves unset
    when it trains a method (task.trainable=method or unset) and names LoRA or no method: so
    `method.r=32` alone keeps LoRA on every linear layer. Another method's section is left as is."""
    task = raw.get("task") if isinstance(raw.get("task"), dict) else {}
    method = raw.get("method") if isinstance(raw.get("method"), dict) else {}
    trains_method = task.get("trainable", "method") == "method"
    if trains_method and method.get("name", DEFAULT_METHOD["name"]) == DEFAULT_METHOD["name"]:
        return {**DEFAULTS, "method": DEFAULT_METHOD}
    return DEFAULTS


register_mode(
    ModeSpec(
        name="head",
        help="a linear head on the model's last/first token",
        fit=fit_head,
        load=load_head,
        defaults=head_defaults,
    )
)
