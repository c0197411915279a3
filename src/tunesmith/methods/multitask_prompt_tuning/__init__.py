"""Multitask prompt tuning (Wang et al. 2023, "Multitask Prompt Tuning Enables Parameter-Efficient
Transfer Learning"): one prompt shared by all tasks, made task-specific by an elementwise rank-r
matrix per task, prompt_t = P * (u_t v_t). Each row of a batch gets its task's prompt (task ids
from the `task_ids` forward keyword, the `task_ids` data field, or the `task_ids` context
manager; task 0 when none is given). Transfer: initialise from an adapter trained on source
tasks (init: average_source_tasks, exact_source_task, only_source_shared). Not mergeable.
"""

import contextlib

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ...errors import ConfigError
from ..base import PROMPT_LAYER_ATTR, MethodSpec
from ..registry import register_method
from ..virtual_tokens import attach_virtual_tokens
from .config import PEFT_TYPE, MultitaskPromptTuningConfig, from_peft_config, to_peft_config
from .layers import TASK_IDS, MultitaskPrompt, MultitaskPromptLayer

__all__ = [
    "TASK_IDS",
    "MultitaskPromptLayer",
    "MultitaskPromptTuningConfig",
    "apply_multitask_prompt_tuning",
    "task_ids",
]


def apply_multitask_prompt_tuning(
    model: nn.Module, cfg: MultitaskPromptTuningConfig, adapter_name: str = "default"
) -> None:
    """Add the shared prompt and the task factors as adapter `adapter_name`.

    Raises ConfigError when the source adapter of a source-task init cannot be read or does not
    fit, or when the model holds another prompt-based method's adapter.
    """
    dim = model.get_input_embeddings().weight.shape[1]
    device = model.get_input_embeddings().weight.device
    n, tasks, r = cfg.num_virtual_tokens, cfg.num_tasks, cfg.num_ranks
    shared = torch.randn(n, dim, device=device)  # PEFT: nn.Embedding's N(0, 1)
    cols = torch.normal(0.0, 0.02, size=(tasks, n, r), device=device)
    rows = torch.normal(0.0, 0.02, size=(tasks, r, dim), device=device)
    if cfg.init_from:
        shared, cols, rows = _from_source(cfg, shared, cols, rows)
    layer = attach_virtual_tokens(model, MultitaskPromptLayer)
    layer.add_encoder(adapter_name, MultitaskPrompt(shared, cols, rows))


def _from_source(cfg, shared, cols, rows):
    # PEFT's source-task inits: the shared prompt, and the mean or one task of the factors.
    try:
        src = load_file(cfg.init_from)
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"method.init_from={cfg.init_from!r} cannot be read ({e})") from None
    need = {"prompt_embeddings": shared, "prefix_task_cols": cols, "prefix_task_rows": rows}
    for key, like in need.items():
        got = src.get(key)
        if got is None or got.shape[-2:] != like.shape[-2:]:
            raise ConfigError(
                f"method.init_from={cfg.init_from!r}: {key} is "
                f"{'missing' if got is None else tuple(got.shape)}, this adapter needs "
                f"(..., {', '.join(map(str, like.shape[-2:]))}); use a multitask prompt adapter "
                f"with the same num_virtual_tokens and num_ranks, trained on this base model"
            )
    shared = src["prompt_embeddings"].to(shared)
    if cfg.init == "only_source_shared":
        return shared, cols, rows
    src_cols, src_rows = src["prefix_task_cols"], src["prefix_task_rows"]
    if cfg.init == "average_source_tasks":
        return (
            shared,
            src_cols.mean(0, keepdim=True).to(cols),
            src_rows.mean(0, keepdim=True).to(rows),
        )
    if not 0 <= cfg.init_task < src_cols.shape[0]:
        raise ConfigError(
            f"method.init_task={cfg.init_task} is not a task of {cfg.init_from} "
            f"({src_cols.shape[0]} tasks)"
        )
    return shared, src_cols[cfg.init_task][None].to(cols), src_rows[cfg.init_task][None].to(rows)


@contextlib.contextmanager
def task_ids(model: nn.Module, ids):
    """Within the block, forwards without a `task_ids` keyword use `ids` (an int, or one per batch
    row), e.g. around model.generate(...)."""
    layer = getattr(getattr(model, "base_model", model), PROMPT_LAYER_ATTR, None)
    if not isinstance(layer, MultitaskPromptLayer):
        raise ConfigError("task_ids(): the model holds no multitask prompt tuning adapter")
    before, layer.context_task_ids = layer.context_task_ids, ids
    try:
        yield model
    finally:
        layer.context_task_ids = before


register_method(
    MethodSpec(
        name="multitask_prompt_tuning",
        config_cls=MultitaskPromptTuningConfig,
        apply=apply_multitask_prompt_tuning,
        is_prompt_based=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
