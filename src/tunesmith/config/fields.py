"""`opt()`: a dataclass field with a default and a one-line help text (shown by `--help`)."""

import dataclasses
from typing import Any

from ..errors import ConfigError


def opt(default: Any, help: str) -> Any:
    """A config field: `rank: int = opt(8, "LoRA rank r; 4-64 is typical")`."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}
        )
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def check_choice(key: str, value: str, allowed) -> None:
    """ConfigError naming `key` when `value` is not one of `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
