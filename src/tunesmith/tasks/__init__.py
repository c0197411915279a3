"""Task types (`task.type`), one module each, registered on import; and the config loader that
knows every registry (methods, tasks and their sections)."""

from typing import Optional, Sequence

from ..config.loader import ConfigTypes, build_config, fill_defaults, read_raw
from ..config.schema import RunConfig, TaskConfig
from ..methods import config_classes
from . import (
    classify,  # noqa: F401  (registers "classify")
    distill,  # noqa: F401  (registers "distill")
    dpo,  # noqa: F401  (registers "dpo")
    grpo,  # noqa: F401  (registers "grpo")
    kto,  # noqa: F401  (registers "kto")
    ppo,  # noqa: F401  (registers "ppo")
    reward,  # noqa: F401  (registers "reward")
    sft,  # noqa: F401  (registers "sft")
)
from .registry import (
    EvalRequest,
    TaskSpec,
    all_sections,
    get_task,
    merge_export_for,
    register_task,
    task_names,
)

__all__ = [
    "EvalRequest",
    "TaskSpec",
    "all_sections",
    "config_types",
    "get_task",
    "load_config",
    "merge_export_for",
    "register_task",
    "task_names",
]


def config_types() -> ConfigTypes:
    """The registered methods, tasks and plug-in sections, as the config loader takes them."""
    return ConfigTypes(
        methods=config_classes(),
        tasks=task_names(),
        sections=all_sections(),
        active=lambda task: (
            get_task(task.type).sections_for(task) if task.type in task_names() else ()
        ),
    )


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read a run config (YAML file or None for defaults, plus dotted overrides) against every
    registry: method sections, task types and the tasks' own sections are all checked.

    A task's measured defaults (TaskSpec.defaults, e.g. classify's learning rate and epochs) fill
    the keys the file and the overrides leave unset; the saved config.yaml shows them."""
    raw = read_raw(path, overrides)
    fill_defaults(raw, _task_defaults(raw))
    cfg = build_config(raw, config_types(), source=path or "defaults")
    task = get_task(cfg.task.type)
    if cfg.train.activation_checkpointing == "auto":
        cfg.train.activation_checkpointing = task.activation_checkpointing
    finish = task.finish
    if finish is not None:
        finish(cfg)
    return cfg


def _task_defaults(raw: dict) -> dict:
    """The defaults of the task raw names ({} for an unknown task: build_config reports it)."""
    task = raw.get("task") or {}
    name = task.get("type", TaskConfig.type) if isinstance(task, dict) else None
    if name not in task_names() or get_task(name).defaults is None:
        return {}
    return get_task(name).defaults(raw)
