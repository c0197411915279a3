"""Multitask prompt tuning config: a shared prompt P (n x D) times a task's rank-r matrix
u_t v_t (n x r times r x D), elementwise: prompt_t = P * (u_t v_t) (Wang et al. 2023)."""

from dataclasses import dataclass
from typing import Optional

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError

PEFT_TYPE = "MULTITASK_PROMPT_TUNING"
# ours -> PEFT's prompt_tuning_init
INITS = {
    "random": "RANDOM",
    "average_source_tasks": "AVERAGE_SOURCE_TASKS",
    "exact_source_task": "EXACT_SOURCE_TASK",
    "only_source_shared": "ONLY_SOURCE_SHARED",
}
SOURCE_INITS = ("average_source_tasks", "exact_source_task", "only_source_shared")


@dataclass
class MultitaskPromptTuningConfig(MethodConfig):
    name: str = opt("multitask_prompt_tuning", "method name")
    num_virtual_tokens: int = opt(20, "virtual tokens put in front of every input; 8-100")
    num_tasks: int = opt(1, "tasks, each with its own low-rank factors; task ids 0..num_tasks-1")
    num_ranks: int = opt(1, "rank r of each task's factor u_t (n x r) v_t (r x D); 1 in the paper")
    init: str = opt(
        "random",
        "random (P ~ N(0, 1), factors ~ N(0, 0.02), as PEFT); or from a source-task adapter "
        "(init_from): average_source_tasks (P and the mean of its factors), exact_source_task "
        "(P and task init_task's factors) or only_source_shared (P only)",
    )
    init_from: Optional[str] = opt(
        None, "adapter_model.safetensors of a multitask prompt adapter trained on source tasks"
    )
    init_task: int = opt(0, "the source task whose factors exact_source_task copies")

    def __post_init__(self):
        if min(self.num_virtual_tokens, self.num_tasks, self.num_ranks) < 1:
            raise ConfigError(
                f"method.num_virtual_tokens, num_tasks and num_ranks must be >= 1, got "
                f"{self.num_virtual_tokens}, {self.num_tasks}, {self.num_ranks}"
            )
        if self.init not in INITS:
            raise ConfigError(f"method.init must be one of {', '.join(INITS)}, got {self.init!r}")
        if (self.init in SOURCE_INITS) != bool(self.init_from):
            raise ConfigError(
                f"method.init_from goes with init: {' / '.join(SOURCE_INITS)} (and only with "
                f"those): got init={self.init!r}, init_from={self.init_from!r}"
            )
        if self.init in SOURCE_INITS[:2] and self.num_tasks != 1:
            raise ConfigError(
                f"method.init={self.init} gives one task's factors (as PEFT); set num_tasks: 1, "
                f"got {self.num_tasks}"
            )


def to_peft_config(cfg: MultitaskPromptTuningConfig) -> dict:
    """PEFT's MultitaskPromptTuningConfig keys; dims are left to PEFT, which reads the model."""
    return {
        "peft_type": PEFT_TYPE,
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "num_transformer_submodules": 1,
        "token_dim": None,
        "num_attention_heads": None,
        "num_layers": None,
        "prompt_tuning_init": INITS[cfg.init],
        "prompt_tuning_init_text": None,
        "prompt_tuning_init_state_dict_path": cfg.init_from,
        "prompt_tuning_init_task": cfg.init_task,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
        "num_ranks": cfg.num_ranks,
        "num_tasks": cfg.num_tasks,
        "modules_to_save": None,
    }


def from_peft_config(d: dict) -> MultitaskPromptTuningConfig:
    # The weights come from the file: the init does not matter (a source file may be gone).
    if d.get("num_transformer_submodules") not in (None, 1):
        raise ConfigError(
            f"PEFT multitask prompt tuning with num_transformer_submodules="
            f"{d['num_transformer_submodules']} (encoder-decoder models) is not supported"
        )
    if d.get("modules_to_save"):
        raise ConfigError(
            "this PEFT MULTITASK_PROMPT_TUNING adapter uses modules_to_save, which tunesmith "
            "does not support"
        )
    return MultitaskPromptTuningConfig(
        num_virtual_tokens=d["num_virtual_tokens"],
        num_tasks=d.get("num_tasks", 1),
        num_ranks=d.get("num_ranks", 1),
    )
