"""MultitaskPromptLayer: per batch row, the prompt of that row's task in front of its input.

The encoder holds PEFT's three tensors: the shared prompt `prompt_embeddings` (n, D) and the
task factors `prefix_task_cols` (tasks, n, r) and `prefix_task_rows` (tasks, r, D); task t's
prompt is prompt_embeddings * (cols[t] @ rows[t]), elementwise.

Task ids reach the layer as a `task_ids` keyword of the model's forward ((B,) ints; the data
field of the same name in training) or from the `task_ids` context manager (for generate, which
passes no unknown keywords); without either, every row is task 0.
"""

import torch
from torch import nn

from ...errors import ConfigError
from ..virtual_tokens import VirtualTokenLayer, prepend_embeddings

TASK_IDS = "task_ids"  # the forward keyword and the batch key


class MultitaskPrompt(nn.Module):
    """forward(task_ids (B,)) -> the rows' prompts (B, n, D)."""

    def __init__(self, shared: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        self.prompt_embeddings = nn.Parameter(shared)  # (n, D)
        self.prefix_task_cols = nn.Parameter(cols)  # (tasks, n, r)
        self.prefix_task_rows = nn.Parameter(rows)  # (tasks, r, D)

    @property
    def num_tasks(self) -> int:
        return self.prefix_task_cols.shape[0]

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        cols = torch.index_select(self.prefix_task_cols, 0, task_ids)  # (B, n, r)
        rows = torch.index_select(self.prefix_task_rows, 0, task_ids)  # (B, r, D)
        return self.prompt_embeddings * torch.matmul(cols, rows)  # (B, n, D)


class MultitaskPromptLayer(VirtualTokenLayer):
    def __init__(self):
        super().__init__()
        self.context_task_ids = None  # set by the task_ids context manager
        self._task_ids = None  # of the running forward

    def num_virtual_tokens(self, name: str) -> int:
        return self.encoders[name].prompt_embeddings.shape[0]

    def peft_state(self, name: str, path: str) -> dict[str, torch.Tensor]:
        enc = self.encoders[name]  # PEFT's bare keys, the shared prompt unmultiplied
        return {
            k: getattr(enc, k)
            for k in ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows")
        }

    def before_forward(self, backbone: nn.Module, args: tuple, kwargs: dict):
        kwargs = dict(kwargs)
        given = kwargs.pop(TASK_IDS, None)  # the backbone itself has no use for it
        self._task_ids = given if given is not None else self.context_task_ids
        out = super().before_forward(backbone, args, kwargs)
        return out if out is not None else (args, kwargs)

    def inject(self, backbone: nn.Module, kwargs: dict, name: str) -> int:
        ref = (
            kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        )
        ids = self._row_tasks(ref.shape[0], ref.device, self.encoders[name].num_tasks)
        return prepend_embeddings(backbone, kwargs, self.encoders[name](ids))

    def _row_tasks(self, batch: int, device, num_tasks: int) -> torch.Tensor:
        ids = self._task_ids
        if ids is None:
            return torch.zeros(batch, dtype=torch.long, device=device)  # task 0
        ids = torch.as_tensor(ids, dtype=torch.long, device=device).view(-1)
        if ids.numel() == 1 and batch > 1:
            ids = ids.expand(batch)
        if ids.numel() != batch or ids.min() < 0 or ids.max() >= num_tasks:
            raise ConfigError(
                f"task_ids {ids.tolist()} do not fit a batch of {batch} rows and method.num_tasks="
                f"{num_tasks}: give one id in 0..{num_tasks - 1} per row"
            )
        return ids
