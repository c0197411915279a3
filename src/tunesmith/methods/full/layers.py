"""Full fine-tuning wraps no module: the base parameters themselves are the trained "adapter"."""

from torch import nn

from ..base import adapter_layers


def full_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every base parameter (tied weights once), leaving out other adapters' own parameters."""
    adapter_ids = {
        id(p)
        for _, layer in adapter_layers(model)
        for name in layer.adapter_names
        for p in layer.adapter_parameters(name).values()
    }
    return [p for p in model.parameters() if id(p) not in adapter_ids]
