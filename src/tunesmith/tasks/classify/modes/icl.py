"""task.mode=icl: in-context learning baselines: k demonstrations from the training split, each the template filled
with its text and label word, then the input; the class is the best-scoring label word (as in
prompt-based classification, with a frozen model). Demonstrations are chosen by icl.selection:
random, similar, vote_k or mdl (data.demonstrations)."""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ....config.fields import opt
from ....config.schema import RunConfig
from ....data.classification import LabelledSplits, load_labelled_splits
from ....data.demonstrations import (
    cosine,
    mdl_candidates,
    mdl_choice,
    random_demos,
    similar_demos,
    text_rng,
    vote_k,
)
from ....errors import ConfigError
from ....models.embeddings import Embedder
from ....models.encoders import load_language_model
from ....utils.modules import freeze
from .common import texts_of
from .prompt import PromptScorer
from .registry import ModeSpec, register_mode

log = logging.getLogger(__name__)
SELECTIONS = ("random", "similar", "vote_k", "mdl")


@dataclass
class ICLConfig:
    """The `icl:` section (task.mode=icl); template and label words are in `task` (prompt uses them too)."""

    shots: int = opt(4, "demonstrations per prompt (k)")
    selection: str = opt("random", "random, similar (top-k by embedding), vote_k or mdl")
    pool: int = opt(
        16, "vote_k: examples vote-k selects, the pool each prompt's demonstrations come from"
    )
    candidates: int = opt(
        4,
        "mdl: candidate demonstration sets per input; the one with the lowest label "
        "entropy (description length) is used",
    )

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ConfigError(
                f"icl.selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}"
            )
        for key in ("shots", "pool", "candidates"):
            if getattr(self, key) < 1:
                raise ConfigError(f"icl.{key} must be >= 1, got {getattr(self, key)}")


class ICLPredictor:
    """k-shot prompting with a frozen LM."""

    def __init__(self, scorer: PromptScorer, cfg: RunConfig, pool: list):
        self.scorer, self.cfg, self.pool, self.labels = scorer, cfg, pool, scorer.labels
        self.selection, self.k = cfg.icl.selection, cfg.icl.shots
        self.embedder = (
            None
            if self.selection == "random"
            else Embedder(  # the LM is frozen: embed with it
                cfg.model.name,
                "mean",
                -1,
                cfg.data.max_length,
                cfg.eval.batch_size,
                cfg.train.precision == "bf16",
                model=scorer.lm,
                tokenizer=scorer.tokenizer,
            )
        )
        self.pool_vecs = self.embedder.embed(texts_of(pool)) if self.embedder else None
        self.voted = vote_k(self.pool_vecs, cfg.icl.pool) if self.selection == "vote_k" else None
        if self.voted is not None:
            log.info(
                "vote-k picked %d pool examples: labels %s",
                len(self.voted),
                [pool[i].label for i in self.voted],
            )

    def candidates(self, examples: list) -> list[list[list[int]]]:
        """Per example, candidate demonstration sets (pool indices); one set except for mdl."""
        sims = (
            cosine(self.embedder.embed(texts_of(examples)), self.pool_vecs)
            if self.embedder
            else None
        )
        out = []
        for i, e in enumerate(examples):
            rng = text_rng(self.cfg.train.seed, e.text)
            if self.selection == "random":
                out.append([random_demos(len(self.pool), self.k, rng)])
            elif self.selection == "similar":
                out.append([similar_demos(sims[i], self.k)])
            elif self.selection == "vote_k":
                out.append([similar_demos(sims[i], self.k, among=self.voted)])
            else:
                out.append(mdl_candidates(sims[i], self.k, self.cfg.icl.candidates, rng))
        return out

    def predict_proba(self, examples: list) -> np.ndarray:
        sets = self.candidates(examples)
        label_of = {label: i for i, label in enumerate(self.labels)}
        encoded = [
            self.scorer.encode(e, [(self.pool[j], label_of[self.pool[j].label]) for j in demo_set])
            for e, demo_sets in zip(examples, sets)
            for demo_set in demo_sets
        ]
        probs = self.scorer.predict_proba(encoded)
        out, row = np.zeros((len(examples), len(self.labels)), dtype=np.float32), 0
        for i, demo_sets in enumerate(sets):
            block = probs[row : row + len(demo_sets)]  # (C, K): this input under each candidate set
            out[i] = block[mdl_choice(block)] if len(demo_sets) > 1 else block[0]
            row += len(demo_sets)
        return out


def build(cfg: RunConfig, splits: LabelledSplits) -> ICLPredictor:
    lm, tokenizer = load_language_model(cfg.model.name, cfg.model.dtype, cfg.model.attention)
    freeze(lm)
    return ICLPredictor(PromptScorer(lm, tokenizer, cfg, splits.labels), cfg, splits.train)


def fit_icl(cfg: RunConfig, splits: LabelledSplits, out: Path, progress: bool = False):
    """Nothing trains: choose the pool (vote-k) and return (ICLPredictor, info)."""
    start = time.perf_counter()
    predictor = build(cfg, splits)
    return predictor, {
        "trained": False,
        "trainable_params": 0,
        "setup_seconds": round(time.perf_counter() - start, 1),
        "shots": cfg.icl.shots,
        "selection": cfg.icl.selection,
    }


def load_icl(cfg: RunConfig, out: Path, labels: list) -> ICLPredictor:
    return build(cfg, load_labelled_splits(cfg.data, cfg.train.seed, labels))


register_mode(
    ModeSpec(
        name="icl",
        help="k-shot prompting with chosen demonstrations; nothing trains",
        fit=fit_icl,
        load=load_icl,
        section=("icl", ICLConfig),
        trains=False,
        aliases={
            "icl_shots": "shots",
            "icl_selection": "selection",
            "icl_pool": "pool",
            "icl_candidates": "candidates",
        },
    )
)
