"""task.type=dpo: direct preference optimisation and its relatives (IPO, hinge, robust, ORPO, SimPO)
on preference pairs; settings in the `dpo` section."""

from dataclasses import dataclass

from ..config.fields import opt
from ..errors import ConfigError
from ..objectives.preference import DPO_LOSSES
from .registry import (
    EvalRequest,
    TaskSpec,
    register_task,
)
from .text import metrics_text

REFERENCE_FREE = ("orpo", "simpo")  # losses that never look at a reference model
LOSSES = (*DPO_LOSSES, *REFERENCE_FREE)


@dataclass
class DpoConfig:
    loss: str = opt(
        "sigmoid",
        "sigmoid (DPO), ipo, hinge, robust (noisy labels), TRL's other pair losses "
        "(bco_pair, nca_pair, sppo_hard, apo_zero, apo_down, sigmoid_norm), orpo (odds "
        "ratio + SFT, no reference) or simpo (length-normalised, margin gamma, no reference)",
    )
    beta: float = opt(
        0.1, "strength of the KL leash to the reference (temperature of the implicit reward)"
    )
    label_smoothing: float = opt(
        0.0,
        "robust and simpo: assumed probability that a pair's preference is flipped, in [0, 0.5)",
    )
    gamma: float = opt(0.5, "simpo: target reward margin, as gamma/beta in TRL's convention")
    orpo_lambda: float = opt(
        0.1, "orpo: weight of the odds-ratio term added to the chosen answers' NLL"
    )
    precompute_reference: bool = opt(
        True,
        "score the reference once before training (adapter disabled) and "
        "reuse those log-probs every epoch, instead of a second forward per step",
    )

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"dpo.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.beta <= 0:
            raise ConfigError(f"dpo.beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(
                f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}"
            )
        if self.label_smoothing and self.loss not in ("robust", "simpo"):
            raise ConfigError(
                f"dpo.label_smoothing={self.label_smoothing} is used by dpo.loss=robust or simpo only; "
                f"set it to 0 for dpo.loss={self.loss}"
            )

    @property
    def uses_reference(self) -> bool:
        return self.loss not in REFERENCE_FREE


def _train(cfg, progress: bool) -> dict:
    from ..recipes import dpo

    return dpo.run(cfg, progress=progress)


def _evaluate(cfg, request: EvalRequest) -> dict:
    from ..recipes import dpo

    if request.base_only:
        raise ConfigError(
            "--base: a DPO run is scored as policy (adapter) against reference (base); drop --base"
        )
    return dpo.evaluate(cfg, split=request.split, adapter=request.adapter)


register_task(
    TaskSpec(
        name="dpo",
        help="preference tuning on chosen/rejected pairs (DPO, IPO, hinge, robust, "
        "ORPO, SimPO: dpo.loss)",
        train=_train,
        evaluate=_evaluate,
        text=metrics_text,
        # train.activation_checkpointing: auto means on. LoRA DPO on SmolLM2-135M (4 pairs a
        # step, one core) peaked at 1,549 MB RSS without it and 1,283 MB with it (TRL's
        # DPOTrainer: 2,261 MB), at 1.76 s per step instead of 1.27 (TRL: 4.38); bench/README.md.
        activation_checkpointing=True,
        sections={"dpo": DpoConfig},
    )
)
