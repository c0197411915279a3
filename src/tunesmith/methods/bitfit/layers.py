"""Which parameters BitFit trains: every parameter named `bias` (linear, LayerNorm, LM-head biases).

No module is wrapped; the biases train in place.
"""

from torch import nn

from ...errors import UnsupportedModuleError
from ..base import adapter_layers


def bias_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The model's bias vectors (tied ones once), leaving out other adapters' own parameters.

    Raises UnsupportedModuleError when there is none (Llama-family models have no biases).
    """
    adapter_ids = {
        id(p)
        for _, layer in adapter_layers(model)
        for name in layer.adapter_names
        for p in layer.adapter_parameters(name).values()
    }
    biases = [
        p
        for n, p in model.named_parameters()
        if n.rsplit(".", 1)[-1] == "bias" and id(p) not in adapter_ids
    ]
    if not biases:
        raise UnsupportedModuleError(
            f"bitfit trains bias terms only, but this {type(model).__name__} has no bias parameter (Llama-family "
            f"models use bias-free linear layers and RMSNorm); use lora, ia3 or selected instead"
        )
    return biases
