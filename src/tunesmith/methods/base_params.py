"""Base weights that a method trains in place (full, selected, bitfit): which adapter owns which
parameters, the copy of their starting values that lets `base.disabled_adapters` run the starting
model, and re-pointing them when a wrapper (FSDP) replaces the parameter objects."""

from torch import nn

from ..errors import ConfigError

# {adapter name: [[parameter, its original tensor], ...]}, stored on the model
BASE_PARAMS_ATTR = "tunesmith_base_params"


def train_base_parameters(model: nn.Module, adapter_name: str, params) -> None:
    """Make base parameters `params` adapter `adapter_name`: they train in place (full, bitfit ...).

    A copy of each original is kept so `disabled_adapters` can still run the base model; io saves
    the parameters themselves as base_model.model.<parameter path>. Raises ConfigError when another
    adapter already trains one of them.
    """
    held = getattr(model, BASE_PARAMS_ATTR, {})
    taken = {id(p) for other, pairs in held.items() if other != adapter_name for p, _ in pairs}
    unique = list({id(p): p for p in params}.values())  # tied weights count once
    if any(id(p) in taken for p in unique):
        raise ConfigError(
            f"adapter {adapter_name!r} would train base weights that adapter(s) "
            f"{', '.join(n for n in held if n != adapter_name)} already train; load one of them only"
        )
    held[adapter_name] = [[p, p.detach().clone()] for p in unique]
    setattr(model, BASE_PARAMS_ATTR, held)


def release_starting_weights(model: nn.Module) -> None:
    """Drop the copies `train_base_parameters` keeps of the weights trained in place (one copy of
    everything `full` trains); afterwards `disabled_adapters` raises."""
    for pairs in getattr(model, BASE_PARAMS_ATTR, {}).values():
        for pair in pairs:
            pair[1] = None


def check_starting_weights_kept(model: nn.Module) -> None:
    held = getattr(model, BASE_PARAMS_ATTR, {})
    released = [name for name, pairs in held.items() if any(o is None for _, o in pairs)]
    if released:
        raise ConfigError(
            f"adapter(s) {', '.join(released)} train base weights in place and their starting "
            "values were released when training began, because the training objective did not "
            "use the starting model (Objective.uses_starting_weights=False); train with an "
            "objective that sets it to keep them"
        )


def base_parameter_paths(model: nn.Module) -> dict[str, list[str]]:
    """For each adapter, the paths of the base parameters it trains in place (in its order)."""
    paths = {id(p): n for n, p in model.named_parameters()}
    held = getattr(model, BASE_PARAMS_ATTR, {})
    return {name: [paths[id(p)] for p, _ in pairs] for name, pairs in held.items()}


def rebind_base_parameters(model: nn.Module, paths: dict[str, list[str]]) -> None:
    """Point the adapters' in-place base parameters at the model's parameters now at `paths`
    (from base_parameter_paths), after a wrapper replaced the parameter objects (FSDP does)."""
    current = dict(model.named_parameters())
    for name, pairs in getattr(model, BASE_PARAMS_ATTR, {}).items():
        for pair, path in zip(pairs, paths[name]):
            pair[0] = current[path]


def base_parameters(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """The base parameters adapter `adapter_name` trains in place, by their current paths."""
    pairs = getattr(model, BASE_PARAMS_ATTR, {}).get(adapter_name, [])
    paths = {id(p): n for n, p in model.named_parameters()}  # first name of tied weights
    return {paths[id(p)]: p for p, _ in pairs}


def swap_base_parameters(model: nn.Module) -> None:
    # Swap storage, not values: no copy, and autograd's version counters stay untouched, so a
    # reference forward pass inside disabled_adapters cannot break a pending backward pass.
    for pairs in getattr(model, BASE_PARAMS_ATTR, {}).values():
        for pair in pairs:
            p, other = pair
            pair[1], p.data = p.data, other.to(p.device, p.dtype)
