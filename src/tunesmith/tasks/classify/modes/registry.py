"""Name -> ModeSpec. Classification modes (`task.mode`) register themselves on import of this package.

A mode says how a classifier is fitted and loaded again, which config section it owns (if any), and
whether it trains model weights (so whether `task.trainable` and a `method:` section apply). The
classify recipe, the config check and `tunesmith tasks` ask this registry; none branches on a name.
"""

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

from ....config.schema import MethodConfig
from ....errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModeSpec:
    name: str
    help: str  # one line
    fit: Callable  # fit(cfg, splits, out, progress) -> (predictor, info dict)
    load: Callable  # load(cfg, out, labels) -> predictor, from what fit saved in out
    section: Optional[tuple] = None  # (section name, dataclass) of the mode's own settings
    trains: bool = True  # can train model weights: task.trainable (and a method section) apply
    # fits on one feature vector per example, so feature-space re-sampling (SMOTE ...) applies
    feature_space: bool = False
    # older flat task keys that fill the section: task key -> section field (e.g. feature_c -> c)
    aliases: dict = field(default_factory=dict)
    # defaults(raw config) -> {section: {key: value}}: this mode's measured defaults, filled in
    # where a config leaves a key unset (None: the schema's)
    defaults: Optional[Callable[[dict], dict]] = None


_REGISTRY: dict[str, ModeSpec] = {}


def register_mode(spec: ModeSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"classification mode {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def get_mode(name: str) -> ModeSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"task.mode must be one of {', '.join(mode_names())}, got {name!r}")
    return _REGISTRY[name]


def mode_names() -> list[str]:
    return sorted(_REGISTRY)


def sections() -> dict[str, type]:
    """Every mode's config section, by section name."""
    return dict(spec.section for spec in _REGISTRY.values() if spec.section)


def mode_defaults(raw: dict) -> dict:
    """The defaults of the mode a raw config names (task.mode, else the schema's default mode);
    {} for an unknown mode, which the config check reports."""
    from ....config.schema import TaskConfig

    task = raw.get("task") or {}
    name = task.get("mode", TaskConfig.mode) if isinstance(task, dict) else None
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    return spec.defaults(raw) if spec is not None and spec.defaults is not None else {}


def active_sections(task_cfg) -> list[str]:
    """The config section of task_cfg.mode (none for a mode without one); checks task.mode."""
    spec = get_mode(task_cfg.mode)
    return [spec.section[0]] if spec.section else []


def resolve(cfg) -> None:
    """Finish a classify config where the loader cannot (config/ knows no mode): move the older flat
    task keys into the mode's section, and refuse a method section the run would not use.

    An alias conflicts with the section key when both are set and the section value is not its
    default (a section key set to its default value cannot be told from an absent one). Aliases of
    another mode are ignored with a warning. Idempotent: the aliases are cleared once moved.
    """
    spec = get_mode(cfg.task.mode)
    _move_aliases(cfg, spec)
    _check_method(cfg, spec)
    _check_balance(cfg, spec)


def _check_balance(cfg, spec: ModeSpec) -> None:
    from ....data.resampling import needs_features

    if spec.feature_space or not needs_features(cfg.data.balance):
        return
    accepting = [s.name for s in _REGISTRY.values() if s.feature_space]
    raise ConfigError(
        f"data.balance={cfg.data.balance} makes or compares feature vectors, so it applies to "
        f"task.mode={' or '.join(accepting)} only, not to task.mode={spec.name}; with {spec.name} "
        f"use data.balance=random_oversample, random_undersample, oversample or undersample, "
        f"or task.class_weights=true"
    )


def _move_aliases(cfg, spec: ModeSpec) -> None:
    for other in _REGISTRY.values():
        for key, target in other.aliases.items():
            value = getattr(cfg.task, key)
            if value is None:
                continue
            section_name, section_cls = other.section
            if other is not spec:
                log.warning(
                    "task.%s is a task.mode=%s setting (%s.%s); ignored with task.mode=%s",
                    key,
                    other.name,
                    section_name,
                    target,
                    spec.name,
                )
            else:
                section = getattr(cfg, section_name)
                default = next(
                    f for f in dataclasses.fields(section_cls) if f.name == target
                ).default
                current = getattr(section, target)
                if current != default and current != value:
                    raise ConfigError(
                        f"task.{key}={value!r} and {section_name}.{target}={current!r} disagree; "
                        f"task.{key} is the older name of {section_name}.{target}: keep one"
                    )
                cfg.plugins[section_name] = dataclasses.replace(section, **{target: value})
            setattr(cfg.task, key, None)


def _check_method(cfg, spec: ModeSpec) -> None:
    """A method section is used only with task.trainable=method in a mode that trains. Told from the
    loader's default by value: `method: {name: lora}` with every field at its default passes."""
    if (spec.trains and cfg.task.trainable == "method") or _is_default_method(cfg.method):
        return
    name = cfg.method.name
    if not spec.trains:
        raise ConfigError(
            f"method.name={name} is set but task.mode={spec.name} trains no model weights; "
            f"remove the method section"
        )
    what = {
        "none": "nothing",
        "head": "the head only",
        "last_block": "the last block",
        "last_two_blocks": "the last two blocks",
        "last_blocks": f"the last {cfg.task.last_blocks} blocks",
        "all": "the whole model",
    }.get(cfg.task.trainable, cfg.task.trainable)
    raise ConfigError(
        f"method.name={name} is set but task.trainable={cfg.task.trainable} trains {what}; set "
        f"task.trainable=method to train with {name}, or remove the method section"
    )


def _is_default_method(method) -> bool:
    """The method the loader fills in when a config has no method section."""
    from ....methods import config_classes

    if method.name != MethodConfig.name:
        return False
    return type(method) is MethodConfig or method == config_classes()[MethodConfig.name]()
