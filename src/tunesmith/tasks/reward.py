"""task.type=reward: a reward model (scalar head, Bradley-Terry loss) trained on preference pairs.

The `reward` section is shared with the tasks that optimise against a reward (ppo, grpo): there
`model` or `function` names the reward; here `center_coefficient` shapes the training.
"""

from dataclasses import dataclass
from typing import Optional

from ..config.fields import opt
from ..errors import ConfigError
from .registry import (
    EvalRequest,
    TaskSpec,
    register_task,
)
from .text import metrics_text


@dataclass
class RewardConfig:
    model: Optional[str] = opt(
        None, "ppo/grpo: a reward run's output.dir (or a sequence-classification directory)"
    )
    function: Optional[str] = opt(
        None, "ppo/grpo: module:fn, fn(prompts, completions, **fields) -> list of floats"
    )
    center_coefficient: float = opt(
        0.0,
        "reward training: weight of mean((r_chosen + r_rejected)^2), which keeps "
        "rewards centred on zero (TRL's center_rewards_coefficient; 0.01 is usual)",
    )

    def __post_init__(self):
        if self.center_coefficient < 0:
            raise ConfigError(
                f"reward.center_coefficient must be >= 0, got {self.center_coefficient}"
            )


def check_policy_reward(cfg, task: str) -> None:
    """The finish step of the tasks that optimise against a reward (ppo, grpo)."""
    if bool(cfg.reward.model) == bool(cfg.reward.function):
        raise ConfigError(
            f"task.type={task} needs exactly one of reward.model (a reward run's output.dir, or a "
            f"sequence-classification directory) and reward.function (module:fn)"
        )
    if cfg.reward.center_coefficient:
        raise ConfigError(
            f"reward.center_coefficient={cfg.reward.center_coefficient} shapes reward-model "
            f"training only; remove it for task.type={task}"
        )


def policy_evaluate(task: str):
    """`tunesmith eval` of a task that optimises against a reward: the held-out reward of the
    adapter's answers, the reference's (adapter disabled) and the win rate over it."""

    def evaluate(cfg, request: EvalRequest) -> dict:
        from ..recipes.on_policy import evaluate_on_policy

        if request.base_only:
            raise ConfigError(
                f"--base: a {task} run is scored as policy (adapter) against reference (base); "
                f"drop --base"
            )
        return evaluate_on_policy(cfg, split=request.split, adapter=request.adapter)

    return evaluate


def _train(cfg, progress: bool) -> dict:
    from ..recipes import reward

    return reward.run(cfg, progress=progress)


def _evaluate(cfg, request: EvalRequest) -> dict:
    from ..recipes import reward

    if request.base_only or request.adapter:
        raise ConfigError(
            "--base and --adapter do not apply to a reward model: it is read from output.dir"
        )
    return reward.evaluate(cfg, split=request.split)


def _merge_export(adapter_dir):
    from ..recipes import reward

    if not reward.is_reward_run(adapter_dir):
        return None
    return lambda lm, tokenizer, out: reward.export_merged(lm, tokenizer, adapter_dir, out)


register_task(
    TaskSpec(
        name="reward",
        help="reward model on chosen/rejected pairs (Bradley-Terry loss)",
        train=_train,
        evaluate=_evaluate,
        text=metrics_text,
        sections={"reward": RewardConfig},
        merge_export=_merge_export,
    )
)
