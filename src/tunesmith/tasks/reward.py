"""task.type=reward: a reward model (scalar head, Bradley-Terry loss) trained on preference pairs.

The `reward` section is shared with the tasks that optimise against a reward (ppo, grpo): there
`model` or `function` names the reward; here `center_coefficient` shapes the training.
"""

from dataclasses import dataclass
from typing import Optional

from ..config.fields import opt
from ..errors import ConfigError
from .registry import EvalRequest, TaskSpec, register_task
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
