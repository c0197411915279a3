"""Sparse fine-tuning config: a masked weight update M * delta, pruned by magnitude over rounds."""

from dataclasses import dataclass
from typing import Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

PEFT_TYPE = "TUNESMITH_SPARSE"
SCHEDULES = ("cubic", "linear")


@dataclass
class SparseConfig(MethodConfig):
    name: str = opt("sparse", "method name")
    target_modules: Union[str, list] = opt(
        "all-linear", "layer names (list), a full-name regex, or 'all-linear'"
    )
    sparsity: float = opt(
        0.9, "final fraction of each targeted weight kept at its pretrained value, in [0, 1)"
    )
    rounds: int = opt(4, "pruning rounds that raise the sparsity from 0 to method.sparsity")
    prune_every: int = opt(
        50, "optimizer steps between pruning rounds: round k runs after step k * prune_every"
    )
    schedule: str = opt(
        "cubic",
        "sparsity after round k of n: cubic s(1-(1-k/n)^3) (Zhu & Gupta 2017) or linear s*k/n",
    )

    def __post_init__(self):
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"method.sparsity must be in [0, 1), got {self.sparsity}")
        if self.rounds < 1 or self.prune_every < 1:
            raise ConfigError(
                f"method.rounds and method.prune_every must be >= 1, "
                f"got {self.rounds} and {self.prune_every}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"method.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if not self.target_modules:
            raise ConfigError(
                "method.target_modules is empty; give layer names, a regex or 'all-linear'"
            )

    def sparsity_after(self, round_: int) -> float:
        """Target sparsity once `round_` rounds have run: 0 at round 0, method.sparsity from round n on."""
        done = min(max(round_, 0), self.rounds) / self.rounds
        return self.sparsity * (1 - (1 - done) ** 3 if self.schedule == "cubic" else done)

    def round_at(self, step: int) -> int:
        """Rounds run once optimizer step `step` (from 1) is done."""
        return min(step // self.prune_every, self.rounds)


def to_peft_config(cfg: SparseConfig) -> dict:
    targets = (
        cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
    )
    return {
        "peft_type": PEFT_TYPE,
        "target_modules": targets,
        "sparsity": cfg.sparsity,
        "rounds": cfg.rounds,
        "prune_every": cfg.prune_every,
        "schedule": cfg.schedule,
    }


def from_peft_config(d: dict) -> SparseConfig:
    return SparseConfig(
        target_modules=d["target_modules"],
        sparsity=d["sparsity"],
        rounds=d["rounds"],
        prune_every=d["prune_every"],
        schedule=d.get("schedule", "cubic"),
    )
