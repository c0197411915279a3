"""task.type=kto: Kahneman-Tversky optimisation on unpaired examples (prompt, completion, label
desirable true/false); settings in the `kto` section."""

from dataclasses import dataclass

from ..config.fields import opt
from ..errors import ConfigError
from .registry import EvalRequest, TaskSpec, register_task
from .text import metrics_text


@dataclass
class KtoConfig:
    beta: float = opt(0.1, "strength of the KL leash to the reference (as in DPO)")
    desirable_weight: float = opt(
        1.0, "loss weight of desirable examples (raise it when they are the fewer)"
    )
    undesirable_weight: float = opt(1.0, "loss weight of undesirable examples")

    def __post_init__(self):
        if self.beta <= 0:
            raise ConfigError(f"kto.beta must be > 0, got {self.beta}")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise ConfigError(
                f"kto.desirable_weight and kto.undesirable_weight must be > 0, got "
                f"{self.desirable_weight}, {self.undesirable_weight}"
            )


def _train(cfg, progress: bool) -> dict:
    from ..recipes import kto

    return kto.run(cfg, progress=progress)


def _evaluate(cfg, request: EvalRequest) -> dict:
    from ..recipes import kto

    if request.base_only:
        raise ConfigError(
            "--base: a KTO run is scored as policy (adapter) against reference (base); drop --base"
        )
    return kto.evaluate(cfg, split=request.split, adapter=request.adapter)


register_task(
    TaskSpec(
        name="kto",
        help="preference tuning on unpaired examples labelled desirable or not (KTO)",
        train=_train,
        evaluate=_evaluate,
        text=metrics_text,
        sections={"kto": KtoConfig},
    )
)
