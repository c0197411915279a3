"""Which modules `selected` trains: the last K transformer blocks and modules matched by name.

No module is wrapped; the chosen modules' own parameters train in place.
"""

import re

from torch import nn

from ...errors import ConfigError, UnsupportedModuleError
from ...utils.modules import named_transformer_blocks


def top_block_names(model: nn.Module, k: int) -> list[str]:
    """Names of the last k blocks. Raises ConfigError when the model has fewer."""
    try:
        name, blocks = named_transformer_blocks(model)
    except UnsupportedModuleError as e:
        raise UnsupportedModuleError(
            f"method.top_k_layers: {e}; use method.modules instead"
        ) from None
    if k > len(blocks):
        raise ConfigError(
            f"method.top_k_layers={k} but the model has only {len(blocks)} blocks ({name}.0-"
            f"{len(blocks) - 1}); use at most {len(blocks)}"
        )
    return [f"{name}.{i}" for i in range(len(blocks) - k, len(blocks))]


def match_modules(model: nn.Module, patterns: list[str]) -> list[str]:
    """Module names matched by each pattern: the full name, its tail ('.' + pattern), or a full-name regex.

    Raises ConfigError for an invalid regex and UnsupportedModuleError, listing what exists, for a
    pattern that matches nothing.
    """
    names = [n for n, _ in model.named_modules() if n]
    matched = []
    for pattern in patterns:
        hits = [
            n for n in names if n == pattern or n.endswith("." + pattern) or _fullmatch(pattern, n)
        ]
        if not hits:
            raise UnsupportedModuleError(
                f"method.modules entry {pattern!r} matches no module of this model; "
                f"{_what_exists(model, names)}"
            )
        matched += hits
    return matched


def _fullmatch(pattern: str, name: str) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error as e:
        raise ConfigError(
            f"method.modules entry {pattern!r} is neither a module name nor a valid regex ({e})"
        ) from None


def _what_exists(model: nn.Module, names: list[str]) -> str:
    # Whole names outside the blocks; inside them only the distinct last parts (q_proj, mlp ...).
    try:
        blocks, layers = named_transformer_blocks(model)
    except UnsupportedModuleError:
        return f"its modules are: {', '.join(names)}"
    prefix = blocks + "."
    outside = [n for n in names if not n.startswith(prefix)]
    inside = sorted(
        {n.split(".")[-1] for n in names if n.startswith(prefix)}
        - {str(i) for i in range(len(layers))}
    )
    return (
        f"modules outside the blocks: {', '.join(outside)}; blocks: {blocks}.0-{len(layers) - 1}, "
        f"which contain: {', '.join(inside)}"
    )


def selected_parameters(model: nn.Module, module_names: list[str]) -> list[nn.Parameter]:
    """Parameters of the named modules (recursively), each once."""
    params = {}
    for name in module_names:
        for p in model.get_submodule(name).parameters():
            params[id(p)] = p
    return list(params.values())
