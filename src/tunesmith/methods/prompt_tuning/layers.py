"""PromptTuningLayer: the virtual-token embeddings, put in front of the input embeddings."""

import math

import torch
from torch import nn

from ...errors import ConfigError
from ..virtual_tokens import VirtualTokenLayer, prepend_embeddings


class PromptTuningLayer(VirtualTokenLayer):
    """One PromptTable (n, hidden) per adapter; the first pass prepends the active one."""

    def num_virtual_tokens(self, name: str) -> int:
        return self.encoders[name].weight.shape[0]

    def inject(self, backbone: nn.Module, kwargs: dict, name: str) -> int:
        return prepend_embeddings(backbone, kwargs, self.encoders[name]())


def initial_table(embeddings: nn.Embedding, n: int, init: str, token_ids=None) -> torch.Tensor:
    """(n, hidden) float32 start values, as PEFT's PromptEmbedding makes them.

    random: N(0, 1); vocab: rows of `embeddings` at n random ids; text: rows at `token_ids`,
    repeated or cut to n.
    """
    weight = embeddings.weight
    if init == "random":
        return torch.randn(n, weight.shape[1], device=weight.device)
    if init == "vocab":
        ids = torch.randint(0, weight.shape[0], (n,), device=weight.device)
    else:
        if not token_ids:
            raise ConfigError("method.init_text tokenizes to no tokens; give a non-empty text")
        ids = torch.tensor((token_ids * math.ceil(n / len(token_ids)))[:n], device=weight.device)
    return embeddings(ids).detach().clone().float()
