"""task.type=grpo: group-relative policy optimisation (and RLOO) on prompts, scored by a reward
model or a Python reward function; settings in the `grpo` section, the reward in `reward`."""

from dataclasses import dataclass
from typing import Optional

from ..config.fields import opt
from ..errors import ConfigError
from ..objectives.grpo import ADVANTAGES, LOSS_TYPES, SCALINGS
from .registry import TaskSpec, register_task
from .reward import RewardConfig, check_policy_reward, policy_evaluate
from .text import metrics_text


@dataclass
class GrpoConfig:
    num_generations: int = opt(4, "answers sampled per prompt (the group compared with itself)")
    advantage: str = opt(
        "grpo",
        "grpo: (reward - group mean) / group std; rloo: reward - mean of the group's others",
    )
    scale_rewards: str = opt(
        "group", "grpo: divide by the std of the group, of the whole batch, or none"
    )
    loss_type: str = opt(
        "dapo",
        "dapo/bnpo: mean over every token of the batch; grpo: mean per answer, then over "
        "answers; dr_grpo: sum / (answers x max_new_tokens)",
    )
    beta: float = opt(0.04, "weight of the k3 KL penalty to the reference (adapter disabled)")
    epsilon: float = opt(0.2, "clip range of the probability ratio (lower side)")
    epsilon_high: Optional[float] = opt(None, "upper clip range (DAPO: 0.28); None: epsilon")
    num_iterations: int = opt(1, "optimizer updates per batch of rollouts (GRPO's mu)")
    max_new_tokens: int = opt(64, "length limit of a sampled answer")
    temperature: float = opt(1.0, "sampling temperature (log-probs are taken at it too)")
    top_p: float = opt(1.0, "nucleus sampling: keep the smallest token set with this mass")

    def __post_init__(self):
        _one_of("advantage", self.advantage, ADVANTAGES)
        _one_of("scale_rewards", self.scale_rewards, SCALINGS)
        _one_of("loss_type", self.loss_type, LOSS_TYPES)
        if self.num_generations < 2:
            raise ConfigError(
                f"grpo.num_generations must be >= 2 (a group compares its answers), got "
                f"{self.num_generations}"
            )
        for name in ("max_new_tokens", "num_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")
        if self.beta < 0 or self.epsilon <= 0 or (self.epsilon_high or 1) <= 0:
            raise ConfigError("grpo.beta must be >= 0 and grpo.epsilon(_high) > 0")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError(
                f"grpo.temperature must be > 0 and grpo.top_p in (0, 1], got "
                f"{self.temperature}, {self.top_p}"
            )


def _one_of(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"grpo.{name} must be one of {', '.join(allowed)}, got {value!r}")


def _train(cfg, progress: bool) -> dict:
    from ..recipes import grpo

    return grpo.run(cfg, progress=progress)


register_task(
    TaskSpec(
        name="grpo",
        help="reinforcement learning from a reward (model or function): k answers per prompt, "
        "group-relative advantages, no value head (GRPO, RLOO)",
        train=_train,
        evaluate=policy_evaluate("grpo"),
        text=metrics_text,
        sections={"grpo": GrpoConfig, "reward": RewardConfig},
        finish=lambda cfg: check_policy_reward(cfg, "grpo"),
    )
)
