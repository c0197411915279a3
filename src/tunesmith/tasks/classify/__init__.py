"""task.type=classify: labelled text, in one of the registered classification modes (task.mode,
`modes/`); each mode's config section (features, prompt, icl) is a section of this task, and only
the active mode's section applies to a run."""

from ...errors import ConfigError
from ..registry import EvalRequest, TaskSpec, register_task
from ..text import classification_text
from . import modes


def _train(cfg, progress: bool) -> dict:
    from ...recipes import classify

    return classify.run(cfg, progress=progress)


def _evaluate(cfg, request: EvalRequest) -> dict:
    from ...recipes import classify

    if request.base_only or request.adapter:
        raise ConfigError(
            "--base and --adapter are for task.type=sft; a classifier is read from output.dir "
            "(for a zero-shot prompt classifier train with task.mode=prompt task.trainable=none)"
        )
    return classify.evaluate(cfg, split=request.split)


register_task(
    TaskSpec(
        name="classify",
        help=f"text classification: {', '.join(modes.mode_names())} (task.mode)",
        train=_train,
        evaluate=_evaluate,
        text=classification_text,
        sections=modes.sections(),
        active_sections=modes.active_sections,
        finish=modes.resolve,
        defaults=modes.mode_defaults,
    )
)
