"""`opt()`: a dataclass field with a default and a one-line help text (shown by `--help`)."""

import dataclasses
from typing import Any


def opt(default: Any, help: str) -> Any:
    """A config field: `rank: int = opt(8, "LoRA rank r; 4-64 is typical")`."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}
        )
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
