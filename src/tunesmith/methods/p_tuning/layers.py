"""P-tuning's prompt encoders (as PEFT's PromptEncoder) and PTuningLayer, which puts their output
in front of the input and into the template's [P] slots."""

import torch
from torch import nn

from ...errors import ConfigError, DataError
from ..virtual_tokens import VirtualTokenLayer, prepend_embeddings


class LstmPromptEncoder(nn.Module):
    """Liu et al.: embeddings -> bidirectional LSTM -> Linear(2h, 2h) -> ReLU -> Linear(2h, D)."""

    def __init__(self, rows: int, dim: int, hidden: int, num_layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(rows, dim)
        self.lstm_head = nn.LSTM(
            dim,
            hidden,
            num_layers=num_layers,
            dropout=dropout,
            bidirectional=True,
            batch_first=True,
        )
        self.mlp_head = nn.Sequential(
            nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim)
        )

    def forward(self) -> torch.Tensor:
        states = self.lstm_head(self.embedding.weight[None])[0]  # (1, rows, 2h)
        return self.mlp_head(states)[0]  # (rows, D)


class MlpPromptEncoder(nn.Module):
    """PEFT's MLP encoder: embeddings -> Linear(D, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, D)."""

    def __init__(self, rows: int, dim: int, hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(rows, dim)
        self.mlp_head = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self) -> torch.Tensor:
        return self.mlp_head(self.embedding.weight)  # (rows, D)


class PTuningLayer(VirtualTokenLayer):
    """Per adapter: an encoder whose first `prepended[name]` rows go in front of the input and
    whose remaining rows fill the template's [P] slots (marked by `placeholder[name]`)."""

    def __init__(self):
        super().__init__()
        self.prepended: dict[str, int] = {}
        self.placeholder: dict[str, int] = {}  # adapters with a template only

    def add_encoder(
        self, name: str, encoder: nn.Module, prepended: int = 0, placeholder=None
    ) -> None:
        super().add_encoder(name, encoder)
        self.prepended[name] = prepended
        if placeholder is not None:
            self.placeholder[name] = placeholder

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.prepended.pop(name)
        self.placeholder.pop(name, None)

    def num_virtual_tokens(self, name: str) -> int:
        return self.prepended[name]

    def inject(self, backbone: nn.Module, kwargs: dict, name: str) -> int:
        table, n = self.encoders[name](), self.prepended[name]  # (n + m, D)
        if name in self.placeholder:
            ids = kwargs.get("input_ids")
            if ids is None:
                raise ConfigError(
                    "a p-tuning template needs input_ids: its [P] slots are found by token id"
                )
            embeds = backbone.get_input_embeddings()(ids)  # (B, T, D)
            kwargs["inputs_embeds"] = fill_slots(embeds, ids, self.placeholder[name], table[n:])
            kwargs["input_ids"] = None
        return prepend_embeddings(backbone, kwargs, table[:n]) if n else 0


def fill_slots(
    embeds: torch.Tensor, ids: torch.Tensor, placeholder: int, soft: torch.Tensor
) -> torch.Tensor:
    """Replace the embeddings at the first m placeholder ids of each row by soft (m, D), in order.

    Later placeholder ids (say, generated ones) stay ordinary tokens. Raises DataError when a
    row has fewer than m.
    """
    m = soft.shape[0]
    hit = ids == placeholder  # (B, T)
    rank = hit.long().cumsum(1) - 1  # which slot each hit fills
    slot = hit & (rank < m)
    short = (slot.sum(1) < m).nonzero()
    if len(short):
        row = int(short[0])
        raise DataError(
            f"p-tuning template: row {row} of the batch has {int(slot[row].sum())} placeholder tokens "
            f"(id {placeholder}), the template needs {m}; build inputs with p_tuning.template_ids"
        )
    rows = soft.to(embeds.dtype)[rank.clamp(0, m - 1)]  # (B, T, D)
    return torch.where(slot[..., None], rows, embeds)
