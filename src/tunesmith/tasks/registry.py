"""Name -> TaskSpec. Tasks (`task.type`) register themselves on import of `tunesmith.tasks`.

A task is what a run optimises and reports: SFT, classification, preference tuning, distillation.
The CLI, the config loader and the loop ask this registry; none of them branches on a task's name.
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import ConfigError


@dataclass(frozen=True)
class EvalRequest:
    """What `tunesmith eval` asks of a task: the split to score, an adapter directory, or the base."""

    split: str = "test"
    adapter: Optional[str] = None
    base_only: bool = False


@dataclass(frozen=True)
class TaskSpec:
    name: str
    help: str  # one line for `tunesmith tasks`
    train: Callable  # train(cfg: RunConfig, progress: bool) -> metrics dict (also in output.dir/metrics.json)
    evaluate: Callable  # evaluate(cfg, request: EvalRequest) -> metrics dict
    text: Callable  # text(metrics) -> what the CLI prints of them
    sections: dict = field(
        default_factory=dict
    )  # config sections this task adds: name -> dataclass
    # active_sections(task_cfg) -> the section names a run uses (default: all of this task's own)
    active_sections: Optional[Callable] = None
    # finish(cfg): checks and completions across sections, after the loader built them (e.g. older
    # key names moved into their section); raises ConfigError
    finish: Optional[Callable] = None
    # merge_export(adapter_dir) -> None, or save(lm, tokenizer, out_dir) when `tunesmith merge` of
    # a run of this task must write more than the merged causal LM (reward: a sequence classifier)
    merge_export: Optional[Callable] = None
    # what train.activation_checkpointing: auto means for this task
    activation_checkpointing: bool = False
    # defaults(raw config dict) -> {section: {key: value}}: this task's measured defaults, filled in
    # where the config leaves a key unset (they may depend on raw, e.g. on task.mode)
    defaults: Optional[Callable[[dict], dict]] = None

    def sections_for(self, task_cfg) -> list[str]:
        if self.active_sections is not None:
            return list(self.active_sections(task_cfg))
        return list(self.sections)


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"task {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def get_task(name: str) -> TaskSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task.type {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def merge_export_for(adapter_dir) -> Optional[Callable]:
    """save(lm, tokenizer, out_dir) of the task that claims adapter_dir for its merge, else None."""
    for spec in _REGISTRY.values():
        save = spec.merge_export(adapter_dir) if spec.merge_export else None
        if save is not None:
            return save
    return None


def all_sections() -> dict[str, type]:
    """Every plug-in config section of every task (and of its plug-ins), by name."""
    sections: dict[str, type] = {}
    for spec in _REGISTRY.values():
        for name, cls in spec.sections.items():
            if sections.get(name, cls) is not cls:
                raise ValueError(
                    f"config section {name!r} is registered twice with different types"
                )
            sections[name] = cls
    return sections
