"""task.mode=prompt: prompt-based classification (PET / LM-BFF): the template turns an input into a fill-in and each
class is scored by the LM's probability of its label word at the answer slot. Zero-shot with
task.trainable=none; fine-tuned (cross-entropy over the class scores) with last_block,
last_two_blocks, all or method. No parameter is added.

Demonstrations (prompt.demonstrations): one training example per class, filled with its label word,
put before the input; chosen at random or as the most similar of its class (embeddings of the frozen
base model, mean-pooled). A training example never gets itself as a demonstration.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ....config.fields import opt
from ....config.schema import RunConfig
from ....data.classification import LabelledSplits, class_weights, load_labelled_splits
from ....data.demonstrations import cosine, one_per_class, text_rng
from ....data.prompt_template import PromptTemplate, mask_fill
from ....errors import ConfigError
from ....models.embeddings import Embedder
from ....models.encoders import load_language_model
from ....models.frozen_weights import weights_for_training
from ....models.heads import is_decoder
from ....models.prefix_cache import make_prefix
from ....objectives.classification import label_word_scores, weighted_cross_entropy
from ....objectives.sft import supports_hidden_path
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
    texts_of,
    validation,
)
from .registry import ModeSpec, register_mode

log = logging.getLogger(__name__)
DEMONSTRATIONS = ("none", "random", "similar")


@dataclass
class PromptConfig:
    """The `prompt:` section (task.mode=prompt); template and label words are in `task` (icl uses them too)."""

    demonstrations: str = opt(
        "none",
        "none, random or similar: one training example per class put before the "
        "input, with its label word (LM-BFF)",
    )

    def __post_init__(self):
        if self.demonstrations not in DEMONSTRATIONS:
            raise ConfigError(
                f"prompt.demonstrations must be one of {', '.join(DEMONSTRATIONS)}, "
                f"got {self.demonstrations!r}"
            )


@dataclass
class Variant:
    input_ids: list
    slot: int
    hidden: Optional[torch.Tensor] = None


@dataclass
class PromptEncoded:
    variants: list  # one Variant shared by all classes (single-token words) or one per class
    label: int


class PromptScorer:
    """Renders inputs with the template (and demonstrations) and scores the label words with lm."""

    def __init__(self, lm, tokenizer, cfg: RunConfig, labels: list):
        self.lm, self.tokenizer, self.cfg, self.labels = lm, tokenizer, cfg, labels
        self.causal = is_decoder(lm)
        self.template = PromptTemplate(
            tokenizer,
            cfg.task.template,
            labels,
            cfg.task.label_words,
            cfg.task.multi_token,
            cfg.data.max_length,
        )
        words = self.template.words
        if all(len(w) == 1 for w in words):
            self.fills = [[]] if self.causal else [mask_fill(tokenizer, 1)]
        else:
            self.fills = (
                list(words) if self.causal else [mask_fill(tokenizer, len(w)) for w in words]
            )
        self.prefix = None

    def encode(self, example, demos=(), label: int = -1) -> PromptEncoded:
        rendered = [
            self.template.render(example, fill, demos, stop_at_slot=self.causal)
            for fill in self.fills
        ]
        return PromptEncoded([Variant(r.ids, r.slot) for r in rendered], label)

    def scores(self, batch: dict) -> torch.Tensor:
        return label_word_scores(
            self.lm, batch["variants"], self.template.words, self.causal, self.prefix
        )

    @torch.no_grad()
    def predict_proba(self, encoded: list[PromptEncoded]) -> np.ndarray:
        self.lm.eval()
        probs = np.zeros((len(encoded), len(self.labels)), dtype=np.float32)
        lengths = [max(len(v.input_ids) for v in e.variants) for e in encoded]
        for idx in length_batches(lengths, self.cfg.eval.batch_size):
            with autocast(self.cfg):
                scores = self.scores(
                    collate([encoded[i] for i in idx], self.tokenizer.pad_token_id)
                )
            probs[idx] = torch.softmax(scores.float(), -1).numpy()
        return probs


def collate(items: list[PromptEncoded], pad_id: int) -> dict:
    variants = []
    for v in range(len(items[0].variants)):
        parts = [e.variants[v] for e in items]
        ids, mask = pad_batch([p.input_ids for p in parts], pad_id)
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "slot": torch.tensor([p.slot for p in parts]),
        }
        if all(p.hidden is not None for p in parts):
            batch["hidden"] = pad_hidden([p.hidden for p in parts])
        variants.append(batch)
    return {
        "variants": variants,
        "labels": torch.tensor([e.label for e in items]),
        "attention_mask": torch.cat([b["attention_mask"] for b in variants], 1),
    }


class Demonstrations:
    """LM-BFF demonstrations from the training pool: none, random or similar (one per class)."""

    def __init__(self, cfg: RunConfig, pool: list, labels: list):
        self.strategy, self.seed, self.pool, self.n_classes = (
            cfg.prompt.demonstrations,
            cfg.train.seed,
            pool,
            len(labels),
        )
        self.pool_labels = [labels.index(e.label) for e in pool]
        self.embedder = (
            Embedder(
                cfg.model.name,
                "mean",
                -1,
                cfg.data.max_length,
                cfg.eval.batch_size,
                bf16=cfg.train.precision == "bf16",
            )
            if self.strategy == "similar"
            else None
        )

    def choose(self, examples: list, from_pool: bool = False) -> list[list[tuple]]:
        """Per example, [(demo LabelledExample, class id)]; from_pool: examples are the pool itself."""
        if self.strategy == "none":
            return [[] for _ in examples]
        sims = None
        if self.embedder is not None:
            pool_vecs = self.embedder.embed(texts_of(self.pool))
            sims = cosine(
                pool_vecs if from_pool else self.embedder.embed(texts_of(examples)), pool_vecs
            )
        out = []
        for i, e in enumerate(examples):
            picks = one_per_class(
                self.pool_labels,
                self.n_classes,
                None if sims is None else sims[i],
                text_rng(self.seed, e.text),
                exclude=i if from_pool else None,
            )
            out.append([(self.pool[j], c) for j, c in picks])
        return out


class PromptPredictor:
    def __init__(self, scorer: PromptScorer, demos: Demonstrations):
        self.scorer, self.demos, self.labels = scorer, demos, scorer.labels

    def predict_proba(self, examples: list) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        demos = self.demos.choose(examples)
        return self.scorer.predict_proba(
            [self.scorer.encode(e, d, index.get(e.label, -1)) for e, d in zip(examples, demos)]
        )


def build(cfg: RunConfig, splits: LabelledSplits) -> PromptPredictor:
    if cfg.task.trainable == "head":
        raise ConfigError(
            "task.mode=prompt has no classification head to train: use task.trainable=none "
            "(zero-shot), last_block, last_two_blocks, all or method"
        )
    lm, tokenizer = load_language_model(cfg.model.name, cfg.model.dtype, cfg.model.attention)
    set_trainable(lm, cfg, use_lm_head=True)
    weights_for_training(lm, cfg.model.dtype, cfg.train.precision)
    log_parameters(lm, f"prompt-based ({cfg.task.trainable})")
    scorer = PromptScorer(lm, tokenizer, cfg, splits.labels)
    return PromptPredictor(scorer, Demonstrations(cfg, splits.train, splits.labels))


def fit_prompt(cfg: RunConfig, splits: LabelledSplits, out: Path, progress: bool = False):
    """Zero-shot (trainable none) or prompt-based fine-tuning; returns (PromptPredictor, info)."""
    predictor = build(cfg, splits)
    scorer, lm = predictor.scorer, predictor.scorer.lm
    info = {"trained": cfg.task.trainable != "none", "trainable_params": 0}
    if not info["trained"]:
        return predictor, info
    start = time.perf_counter()
    index = {label: i for i, label in enumerate(splits.labels)}
    demos = predictor.demos.choose(splits.train, from_pool=True)
    train_set = [scorer.encode(e, d, index[e.label]) for e, d in zip(splits.train, demos)]
    pad = scorer.tokenizer.pad_token_id
    if cfg.task.cache_frozen and scorer.causal and supports_hidden_path(lm):
        _cache(scorer, train_set, cfg, pad)
    weight = (
        torch.tensor(class_weights(splits.train, splits.labels)) if cfg.task.class_weights else None
    )
    info.update(
        fit(
            lm,
            train_set,
            cfg,
            out,
            lambda m, b: weighted_cross_entropy(
                scorer.scores(b), b["labels"], weight, cfg.task.label_smoothing
            ),
            lambda items: collate(items, pad),
            validation(predictor, splits, cfg, weight),
            progress=progress,
            lengths=[max(len(v.input_ids) for v in e.variants) for e in train_set],
            labels=[e.label for e in splits.train],
        )
    )
    save_trained(lm, out)
    info.update(
        train_seconds=round(time.perf_counter() - start, 1),
        trainable_params=sum(p.numel() for p in lm.parameters() if p.requires_grad),
    )
    scorer.prefix = None  # later predictions run the whole model on new inputs
    return predictor, info


def load_prompt(cfg: RunConfig, out: Path, labels: list) -> PromptPredictor:
    splits = load_labelled_splits(cfg.data, cfg.train.seed, labels)  # the demonstration pool
    predictor = build(cfg, splits)
    if cfg.task.trainable != "none":
        load_trained(predictor.scorer.lm, out)
    return predictor


def _cache(scorer: PromptScorer, train_set: list, cfg: RunConfig, pad: int) -> None:
    first = train_set[0].variants[0].input_ids
    scorer.prefix = make_prefix(scorer.lm, scorer.lm.base_model, pad_batch([first], pad))
    if scorer.prefix is not None:
        cache_hidden(scorer.prefix, [v for e in train_set for v in e.variants], cfg, pad)


register_mode(
    ModeSpec(
        name="prompt",
        help="label words scored at a template's answer slot, zero-shot or fine-tuned",
        fit=fit_prompt,
        load=load_prompt,
        section=("prompt", PromptConfig),
        aliases={"demonstrations": "demonstrations"},
    )
)
