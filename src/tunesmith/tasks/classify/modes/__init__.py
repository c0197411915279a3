"""Classification modes (`task.mode`), one module each, registered on import: head, features, prompt,
icl. A mode module holds its config section (if any), its fit and load, and one `register_mode` call;
the shared pieces are in `common`. Adding a mode is adding a module here and one import line."""

from . import (
    features,  # noqa: F401  (registers "features")
    head,  # noqa: F401  (registers "head")
    icl,  # noqa: F401  (registers "icl")
    prompt,  # noqa: F401  (registers "prompt")
)
from .registry import (
    ModeSpec,
    active_sections,
    get_mode,
    mode_defaults,
    mode_names,
    register_mode,
    resolve,
    sections,
)

__all__ = [
    "ModeSpec",
    "active_sections",
    "get_mode",
    "mode_defaults",
    "mode_names",
    "register_mode",
    "resolve",
    "sections",
]
