"""`opt()`: a dataclass field with a default and a one-line help text (shown by `--help`)."""

import dataclasses
import logging
from typing import Any

from ..errors import ConfigError
from ..utils.hardware import has_native_bf16

log = logging.getLogger(__name__)


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


def warn_if_bf16_is_emulated(setting: str) -> None:
    if not has_native_bf16():
        log.warning(
            "%s: this CPU has no native bf16 instructions, so bf16 matmuls are emulated and run "
            "many times slower than fp32; use train.precision=auto (or fp32) here",
            setting,
        )
