"""task.type=sft: language modelling, instruction and chat tuning (loss on the responses)."""

from ..errors import ConfigError
from .registry import EvalRequest, TaskSpec, register_task
from .text import generation_text


def _train(cfg, progress: bool) -> dict:
    from ..recipes import sft

    return sft.run(cfg, progress=progress)


def evaluate_language_model(cfg, request: EvalRequest) -> dict:
    """`tunesmith eval` of a run whose model is a language model (sft, distill): loss and
    generation scores of the adapter (or, with --base, the model alone)."""
    from ..recipes import evaluate

    if request.base_only and request.adapter:
        raise ConfigError("--base scores the model without an adapter; drop --adapter or --base")
    return evaluate.run(
        cfg, adapter=request.adapter, split=request.split, base_only=request.base_only
    )


register_task(
    TaskSpec(
        name="sft",
        help="language modelling / instruction tuning (loss on the responses)",
        train=_train,
        evaluate=evaluate_language_model,
        text=generation_text,
    )
)
