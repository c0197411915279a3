"""Read YAML, apply dotted `key.sub=value` overrides, check every key and build typed configs.

All problems found are reported together in one ConfigError, each with a did-you-mean hint.
"""

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import yaml

from ..errors import ConfigError
from ..utils.distributed import is_main_process
from .schema import SECTIONS, MethodConfig, RunConfig, TaskConfig


@dataclass(frozen=True)
class ConfigTypes:
    """What the plug-in registries add to the schema. config/ imports no registry, so callers pass
    this in (`tunesmith.load_config` and the CLI pass the registered methods, tasks and modes)."""

    methods: Mapping[str, type] = field(
        default_factory=dict
    )  # method name -> its MethodConfig subclass
    tasks: Sequence[str] = ()  # registered task.type values (empty: not checked)
    sections: Mapping[str, type] = field(default_factory=dict)  # plug-in section name -> dataclass
    # the plug-in sections a run of this task config uses (built with defaults when absent)
    active: Callable[[TaskConfig], Sequence[str]] = field(default=lambda task: ())


def load_config(
    path: Optional[str],
    overrides: Sequence[str] = (),
    types: Union[ConfigTypes, Mapping[str, type], None] = None,
) -> RunConfig:
    """Build a RunConfig from a YAML file (or None for defaults) plus `a.b=value` overrides.

    types: the registries' additions (a plain mapping means method name -> MethodConfig subclass).
    Raises ConfigError listing every unknown key, bad value or unreadable file.
    """
    return build_config(read_raw(path, overrides), types, source=path or "defaults")


def read_raw(path: Optional[str], overrides: Sequence[str] = ()) -> dict:
    """The YAML file (or {} for None) as nested dicts, with the dotted overrides applied; unchecked."""
    raw = _read_yaml(path) if path else {}
    for item in overrides:
        _apply_override(raw, item)
    return raw


def fill_defaults(raw: dict, defaults: Mapping[str, Mapping[str, Any]]) -> None:
    """Put defaults ({section: {key: value}}) into raw where raw does not set the key itself."""
    for section, values in defaults.items():
        node = raw.setdefault(section, {})
        if not isinstance(node, dict):  # reported by build_config
            continue
        for key, value in values.items():
            node.setdefault(key, value)


def build_config(
    raw: Mapping[str, Any],
    types: Union[ConfigTypes, Mapping[str, type], None] = None,
    source: str = "config",
) -> RunConfig:
    types = types if isinstance(types, ConfigTypes) else ConfigTypes(methods=types or {})
    errors: list[str] = []
    allowed = list(SECTIONS) + ["method"] + list(types.sections)
    for key in raw:
        if key not in allowed:
            errors.append(_unknown(key, allowed, source))
    sections = {}
    for name, cls in SECTIONS.items():
        sections[name] = _build_section(cls, raw.get(name) or {}, name, source, errors)
    sections["method"] = _build_method(raw.get("method") or {}, types.methods, source, errors)
    task = sections["task"]
    if types.tasks and task.type not in types.tasks:
        errors.append(_unknown(task.type, list(types.tasks), source, what="task.type"))
    plugins = _build_plugins(raw, types, task, source, errors)
    if len(errors) == 1:
        raise ConfigError(f"invalid config: {errors[0]}")
    if errors:  # all of them at once, so one edit fixes the file
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return RunConfig(**sections, plugins=plugins)


def _build_plugins(raw: Mapping, types: ConfigTypes, task, source: str, errors: list) -> dict:
    """The plug-in sections: those the task uses (defaults filled in); one given for another task
    or mode is an error, not silently ignored."""
    active = list(types.active(task)) if not errors else []
    plugins = {}
    for name, cls in types.sections.items():
        if name in raw and name not in active and not errors:
            errors.append(
                f"section {name!r} does not apply to task.type={task.type} task.mode={task.mode} "
                f"({source}); remove it or change the task"
            )
        elif name in active:
            plugins[name] = _build_section(cls, raw.get(name) or {}, name, source, errors)
    return plugins


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of a (nested) config dataclass, including the method's own fields; a RunConfig's
    plug-in sections are top-level sections, as in the YAML."""
    data = dataclasses.asdict(cfg)
    data.update(data.pop("plugins", {}))
    return data


def save_config(cfg: RunConfig, path: Path) -> None:
    if not is_main_process():  # under torchrun, rank 0 alone writes the run's files
        return
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _read_yaml(path: str) -> dict:
    from ..utils.paths import read_text, yaml_error_line

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {path} is a directory; give the YAML file inside it")
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(read_text(p, ConfigError)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(path, e)) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (model, method, data, ...)"
        )
    return data


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key or "." not in key:
        raise ConfigError(
            f"override {item!r} must look like section.key=value (e.g. train.lr=1e-4)"
        )
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    node[leaf] = _parse_value(value)


def _parse_value(value: str) -> Any:
    """YAML scalars/lists/maps; text that is not valid YAML (e.g. "{text} It was {answer}.") stays a string."""
    if value == "":
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _build_method(
    raw: Mapping, method_types: Mapping[str, type], source: str, errors: list
) -> MethodConfig:
    name = raw.get("name", MethodConfig.name)
    cls = method_types.get(name)
    if cls is None:
        if method_types:
            errors.append(_unknown(name, list(method_types), source, what="method"))
        return MethodConfig(name=name)
    return _build_section(cls, raw, "method", source, errors)


def _build_section(cls: type, raw: Any, section: str, source: str, errors: list) -> Any:
    if not isinstance(raw, Mapping):
        errors.append(f"{section}: expected a mapping of keys, got {raw!r} ({source})")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in fields:
            errors.append(_unknown(f"{section}.{key}", [f"{section}.{k}" for k in fields], source))
            continue
        if dataclasses.is_dataclass(hints[key]):  # a nested section, e.g. train.distributed
            values[key] = _build_section(
                hints[key], value or {}, f"{section}.{key}", source, errors
            )
            continue
        try:
            values[key] = _coerce(value, hints[key])
        except (TypeError, ValueError):
            errors.append(
                f"{section}.{key}: expected {_type_name(hints[key])}, got {value!r} ({source})"
            )
    try:
        return cls(**values)
    except ConfigError as e:
        errors.append(f"{e} ({source})")
    except TypeError as e:
        errors.append(f"{section}: {e} ({source})")
    return cls()


def _coerce(value: Any, hint: Any) -> Any:
    """Convert YAML scalars to the field type (YAML reads 1e-4 as a string; '3' may mean 3)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(value)
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ValueError(value)
        return str(value)
    if hint is list or origin is list:
        return list(value) if isinstance(value, (list, tuple)) else [value]
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _unknown(key: str, allowed: list, source: str, what: str = "key") -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
    return f"unknown {what} {key!r} ({source}){hint}"
