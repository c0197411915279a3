"""The `task:` section of a run config: the task type and the classification settings."""

from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from .fields import check_choice, opt

TRAINABLE = ("head", "last_block", "last_two_blocks", "last_blocks", "all", "method", "none")
# Older flat keys of the classification modes' own sections (features.*, prompt.*, icl.*): still
# read, moved into the section by the classify task (tunesmith/tasks/classify/modes).
_ALIAS = "older name of {}; use that"


@dataclass
class TaskConfig:
    type: str = opt(
        "sft",
        "registered task: sft (language modelling, instruction tuning), classify (labelled "
        "text), ... (see `tunesmith tasks`)",
    )
    mode: str = opt(
        "head",
        "classify: a registered classification mode, e.g. head (classification head on the "
        "model), features (frozen embeddings -> scikit-learn), prompt (label words at an answer "
        "slot) or icl (k-shot prompting, no training); each may add its own section",
    )
    pooling: str = opt(
        "auto",
        "token the head or features read: last (last real token), first, mean, or auto "
        "(last for decoders, first for encoders)",
    )
    trainable: str = opt(
        "last_block",
        "head/prompt modes: what trains: head (head only), last_block, last_two_blocks or "
        "last_blocks (task.last_blocks of them) (+ final norm + head), all, method (the method "
        "section, + head) or none",
    )
    last_blocks: int = opt(
        4, "task.trainable=last_blocks: how many of the top transformer blocks train (>= 1)"
    )
    head_lr_multiplier: float = opt(
        1.0,
        "head mode: the new classification head's learning rate is train.lr times this (a "
        "randomly initialised head learns faster than pretrained weights can), e.g. 10",
    )
    label_smoothing: float = opt(
        0.0, "head/prompt modes: cross-entropy label smoothing in [0, 1), e.g. 0.1"
    )
    score_train: bool = opt(
        True,
        "classify: also score the training split after training (train_accuracy); false saves "
        "a pass over it (minutes for a large split)",
    )
    temperature_scaling: bool = opt(
        True,
        "fit one temperature on the validation split (LBFGS on the NLL) and apply it to the "
        "predicted probabilities when it lowers the validation NLL (saved in calibration.json)",
    )
    labels: list = opt([], "class order; empty: the sorted labels of the training split")
    class_weights: bool = opt(
        False, "weight the loss by inverse class frequency, n / (classes * count)"
    )
    cache_frozen: bool = opt(
        True,
        "run the frozen lower blocks once per example and reuse their output every epoch "
        "(used only where checked exact on the first batch, e.g. Llama-family models)",
    )
    template: str = opt(
        "{text} This message is {answer}",
        "prompt/icl modes: template with {text} (optional "
        "{text_pair}) and the answer slot {answer}",
    )
    label_words: dict = opt(
        {}, "prompt/icl modes: label -> word put at the answer slot, e.g. {spam: spam, ham: normal}"
    )
    multi_token: bool = opt(
        True,
        "prompt/icl modes: allow label words of several tokens (scored by their joint "
        "probability); false makes them an error",
    )
    feature_layer: Optional[int] = opt(None, _ALIAS.format("features.layer"))
    feature_classifier: Optional[str] = opt(None, _ALIAS.format("features.classifier"))
    feature_c: Optional[float] = opt(None, _ALIAS.format("features.c"))
    demonstrations: Optional[str] = opt(None, _ALIAS.format("prompt.demonstrations"))
    icl_shots: Optional[int] = opt(None, _ALIAS.format("icl.shots"))
    icl_selection: Optional[str] = opt(None, _ALIAS.format("icl.selection"))
    icl_pool: Optional[int] = opt(None, _ALIAS.format("icl.pool"))
    icl_candidates: Optional[int] = opt(None, _ALIAS.format("icl.candidates"))

    def __post_init__(self):
        check_choice("task.pooling", self.pooling, ("auto", "last", "first", "mean"))
        check_choice("task.trainable", self.trainable, TRAINABLE)
        if self.last_blocks < 1:
            raise ConfigError(f"task.last_blocks must be >= 1, got {self.last_blocks}")
        if self.head_lr_multiplier <= 0:
            raise ConfigError(
                f"task.head_lr_multiplier must be > 0, got {self.head_lr_multiplier}; 1 gives the "
                f"head train.lr"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"task.label_smoothing must be in [0, 1), got {self.label_smoothing}; e.g. 0.1"
            )
        if "{answer}" not in self.template or "{text}" not in self.template:
            raise ConfigError(
                f"task.template must contain the input slot {{text}} and the answer slot {{answer}}, "
                f"got {self.template!r}; e.g. '{{text}} It was {{answer}}.'"
            )
        if not isinstance(self.label_words, dict):
            raise ConfigError(
                f"task.label_words must map labels to words, e.g. {{spam: spam, ham: normal}}, "
                f"got {self.label_words!r}"
            )
        self.label_words = {str(k): str(v) for k, v in self.label_words.items()}
        self.labels = [str(x) for x in self.labels]
