"""task.type=ppo: PPO-RLHF with a value head on the policy, against a reward model or a Python
reward function; settings in the `ppo` section, the reward in `reward`."""

from dataclasses import dataclass
from typing import Optional

from ..config.fields import opt
from ..errors import ConfigError
from ..objectives.policy import KL_ESTIMATORS
from .registry import TaskSpec, register_task
from .reward import RewardConfig, check_policy_reward, policy_evaluate
from .text import metrics_text


@dataclass
class PpoConfig:
    max_new_tokens: int = opt(64, "length limit of a sampled answer")
    temperature: float = opt(0.7, "sampling temperature (log-probs are taken at it too)")
    top_p: float = opt(
        1.0, "nucleus sampling mass; below 1 the samples leave the scored distribution"
    )
    missing_eos_penalty: float = opt(
        0.0, "subtracted from the score of an answer that did not end (no EOS); 1.0 is usual"
    )
    kl_coef: float = opt(0.05, "weight of the per-token KL penalty to the reference")
    kl_estimator: str = opt(
        "k1", "k1 (log pi - log ref, unbiased, noisy) or k3 (never negative, lower variance)"
    )
    adaptive_kl: bool = opt(False, "adapt kl_coef towards target_kl (Ziegler et al. 2019)")
    target_kl: float = opt(6.0, "adaptive_kl: wanted KL to the reference, nats per answer")
    horizon: int = opt(10000, "adaptive_kl: answers over which the coefficient moves by ~20%")
    gamma: float = opt(1.0, "discount of future rewards in GAE")
    lam: float = opt(0.95, "GAE lambda: bias (0) vs variance (1) of the advantages")
    whiten_advantages: bool = opt(True, "normalise the advantages of a rollout batch")
    whiten_rewards: bool = opt(False, "scale the per-token rewards of a batch to unit variance")
    cliprange: float = opt(0.2, "clip range of the probability ratio in the policy loss")
    cliprange_value: float = opt(0.2, "clip range of the value change in the value loss")
    vf_coef: float = opt(0.1, "weight of the value loss")
    epochs: int = opt(4, "PPO epochs over each batch of rollouts")
    minibatches: int = opt(1, "optimizer updates per epoch (the rollout batch cut in this many)")
    kl_stop_below: Optional[float] = opt(
        -0.5, "stop when the mean KL per answer falls below this (None: never)"
    )
    kl_stop_above: Optional[float] = opt(
        50.0, "stop when the mean KL per answer rises above this (None: never)"
    )

    def __post_init__(self):
        for name in ("max_new_tokens", "horizon", "epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ppo.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("temperature", "cliprange", "cliprange_value", "target_kl"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ppo.{name} must be > 0, got {getattr(self, name)}")
        for name in ("missing_eos_penalty", "kl_coef", "vf_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ppo.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"ppo.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"ppo.top_p must be in (0, 1], got {self.top_p}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(
                f"ppo.kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got "
                f"{self.kl_estimator!r}"
            )
        if self.adaptive_kl and self.kl_coef == 0:
            raise ConfigError(
                "ppo.adaptive_kl=true scales kl_coef, which is 0 and would stay 0; give kl_coef > 0"
            )
        self._check_guard_rails()

    def _check_guard_rails(self):
        if self.kl_stop_below is not None and self.kl_stop_below >= 0:
            raise ConfigError(
                f"ppo.kl_stop_below must be < 0 (KL estimates are noisy around 0), got "
                f"{self.kl_stop_below}"
            )
        if self.kl_stop_above is not None and self.kl_stop_above <= 0:
            raise ConfigError(f"ppo.kl_stop_above must be > 0, got {self.kl_stop_above}")


def _finish(cfg) -> None:
    check_policy_reward(cfg, "ppo")
    rollouts = cfg.train.batch_size * cfg.train.grad_accum
    if cfg.ppo.minibatches > rollouts:
        raise ConfigError(
            f"ppo.minibatches={cfg.ppo.minibatches} exceeds the {rollouts} rollouts of a step "
            f"(train.batch_size x train.grad_accum); lower it or raise those"
        )


def _train(cfg, progress: bool) -> dict:
    from ..recipes import ppo

    return ppo.run(cfg, progress=progress)


register_task(
    TaskSpec(
        name="ppo",
        help="reinforcement learning from a reward (model or function) with a value head: "
        "PPO with a KL penalty to the reference (RLHF)",
        train=_train,
        evaluate=policy_evaluate("ppo"),
        text=metrics_text,
        sections={"ppo": PpoConfig, "reward": RewardConfig},
        finish=_finish,
    )
)
