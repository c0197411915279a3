"""task.type=distill: knowledge distillation of a teacher into the student model.model.name (with
any method; model.keep_layers cuts the student from the teacher's blocks); settings in `distill`."""

from dataclasses import dataclass
from typing import Optional

from ..config.fields import opt
from ..errors import ConfigError
from ..objectives.distill import LOSSES
from .registry import TaskSpec, register_task
from .sft import evaluate_language_model
from .text import generation_text


@dataclass
class DistillConfig:
    teacher: str = opt(
        "default",
        "teacher model: default (the embedded model), a directory (e.g. a merged run), a .gguf "
        "file or a cached HF id; it must share the student's tokenizer",
    )
    teacher_adapter: Optional[str] = opt(
        None, "adapter directory (tunesmith or PEFT) loaded onto the teacher"
    )
    loss: str = opt(
        "forward_kl",
        "forward_kl (KL(teacher || student), mass-covering), reverse_kl (KL(student || "
        "teacher), mode-seeking) or jsd (GKD's generalised Jensen-Shannon, weight distill.beta)",
    )
    temperature: float = opt(
        1.0, "softmax temperature of both distributions; the soft loss is scaled by T^2"
    )
    alpha: float = opt(
        0.5,
        "weight of the hard-label cross-entropy on the data's answers: loss = (1 - alpha) * "
        "T^2 * divergence + alpha * CE; 0 = pure distillation",
    )
    beta: float = opt(0.5, "jsd: weight of the teacher in the mixture (0: forward KL, 1: reverse)")
    cache_top_k: int = opt(
        0,
        "0: teacher logits on the fly in each step (teacher in memory); k > 0: the teacher's "
        "top-k log-probs per response position (plus the remaining mass) cached to disk once, "
        "reused across epochs and resumes, the teacher unloaded for training",
    )
    cache_dir: Optional[str] = opt(
        None, "where the top-k cache lives (default: output.dir/teacher_cache)"
    )
    sequence_level: bool = opt(
        False,
        "sequence-level KD: the teacher answers every training prompt (greedy, once, kept in "
        "output.dir) and the student learns those answers instead of the data's",
    )
    lmbda: float = opt(
        0.0,
        "on-policy share (GKD's lambda): the probability that a batch's answers are sampled "
        "from the student and scored by the teacher instead of taken from the data",
    )
    max_new_tokens: int = opt(64, "sequence_level and on-policy answers: generation limit")
    sample_temperature: float = opt(1.0, "on-policy answers: sampling temperature")

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"distill.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature}")
        for key in ("alpha", "beta", "lmbda"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"distill.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.cache_top_k < 0:
            raise ConfigError(f"distill.cache_top_k must be >= 0, got {self.cache_top_k}")
        if self.max_new_tokens < 1 or self.sample_temperature <= 0:
            raise ConfigError(
                "distill.max_new_tokens must be >= 1 and distill.sample_temperature > 0, got "
                f"{self.max_new_tokens}, {self.sample_temperature}"
            )


def _finish(cfg) -> None:
    if cfg.data.format == "text" or not cfg.data.completion_only:
        raise ConfigError(
            "task.type=distill learns the teacher's answers: use instruction or chat data with "
            "data.completion_only=true (plain text has no answers to distill on)"
        )


def _train(cfg, progress: bool) -> dict:
    from ..recipes import distill

    return distill.run(cfg, progress=progress)


register_task(
    TaskSpec(
        name="distill",
        help="knowledge distillation from a teacher (forward/reverse KL, GKD's JSD; top-k "
        "cache, sequence-level, on-policy; a student cut from the teacher)",
        train=_train,
        evaluate=evaluate_language_model,
        text=generation_text,
        sections={"distill": DistillConfig},
        finish=_finish,
    )
)
