"""task.type=classify: labelled text, in one of the classification modes (task.mode)."""
from ..errors import ConfigError
from .text import classification_text
from .registry import EvalRequest, TaskSpec, register_task


def _train(cfg, progress: bool) -> dict:
    from ..recipes import classify

    return classify.run(cfg, progress=progress)


def _evaluate(cfg, request: EvalRequest) -> dict:
    from ..recipes import classify

    if request.base_only or request.adapter:
        raise ConfigError("--base and --adapter are for task.type=sft; a classifier is read from output.dir "
                          "(for a zero-shot prompt classifier train with task.mode=prompt task.trainable=none)")
    return classify.evaluate(cfg, split=request.split)


register_task(TaskSpec(name="classify", help="text classification: head, features, prompt or icl (task.mode)",
                       train=_train, evaluate=_evaluate, text=classification_text))
