"""The config schema: one dataclass per concern (model, method, data, train, eval, output)."""
from dataclasses import dataclass, field
from typing import Optional, Union

from .errors import ConfigError
from .fields import opt


@dataclass
class ModelConfig:
    name: str = opt("default", "base model: 'default' (embedded SmolLM2-135M-Instruct), a local directory, a .gguf file or a cached HF id")
    dtype: str = opt("float32", "weights dtype: float32 or bfloat16")

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.dtype must be float32 or bfloat16, got {self.dtype!r}")


@dataclass
class MethodConfig:
    """Base of every method's config; `name` picks the method from the registry."""

    name: str = opt("lora", "registered method name (see `tunesmith methods`)")


@dataclass
class DataConfig:
    train: Optional[str] = opt(None, "training file (JSONL, JSON, CSV, TSV, Parquet) or a saved HF dataset directory")
    eval: Optional[str] = opt(None, "validation file; when absent, split off from data.train")
    test: Optional[str] = opt(None, "test file; when absent, split off from data.train")
    format: str = opt("auto", "record format: auto, text, instruction or chat")
    max_length: int = opt(512, "token limit per example; longer examples are truncated (and counted)")
    split: list = opt([0.7, 0.1, 0.2], "train/validation/test fractions used when only data.train is given")
    completion_only: bool = opt(True, "compute the loss on response tokens only (instruction and chat formats)")
    system_prompt: Optional[str] = opt(None, "system message put before every instruction/chat example")
    limit: Optional[int] = opt(None, "use only the first N training records (quick experiments)")

    def __post_init__(self):
        if self.format not in ("auto", "text", "instruction", "chat"):
            raise ConfigError(f"data.format must be auto, text, instruction or chat, got {self.format!r}")
        if self.max_length < 8:
            raise ConfigError(f"data.max_length must be >= 8, got {self.max_length}")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"data.split must be three non-negative fractions summing to 1, got {self.split}")


@dataclass
class TrainConfig:
    epochs: float = opt(1.0, "passes over the training data (ignored when train.max_steps > 0)")
    max_steps: int = opt(0, "optimizer steps to run; 0 = derive from train.epochs")
    batch_size: int = opt(8, "examples per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float = opt(2e-4, "peak learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear warm-up steps")
    scheduler: str = opt("linear", "learning-rate decay after warm-up: linear, cosine or constant")
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 disables clipping")
    seed: int = opt(42, "seed for initialisation, shuffling, dropout and splits")
    precision: str = opt("fp32", "fp32, or bf16 (autocast on CPU; weights stay fp32)")
    eval_every: int = opt(0, "run validation every N steps (0: only at the end)")
    save_every: int = opt(0, "write a resumable checkpoint every N steps (0: only at eval and the end)")
    log_every: int = opt(10, "write metrics every N steps")
    resume: bool = opt(True, "continue from output.dir/checkpoints/last when it exists")

    def __post_init__(self):
        for key in ("batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.scheduler not in ("linear", "cosine", "constant"):
            raise ConfigError(f"train.scheduler must be linear, cosine or constant, got {self.scheduler!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision must be fp32 or bf16, got {self.precision!r}")
        if self.max_steps < 0 or self.epochs <= 0:
            raise ConfigError(f"train.max_steps must be >= 0 and train.epochs > 0, got {self.max_steps}, {self.epochs}")


@dataclass
class EvalConfig:
    max_new_tokens: int = opt(64, "generation limit per example")
    do_sample: bool = opt(False, "sample instead of greedy decoding")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling mass")
    limit: Optional[int] = opt(200, "evaluate generation on at most N examples (None: all)")
    batch_size: int = opt(16, "prompts generated together")
    show: int = opt(3, "sample generations to print")


@dataclass
class OutputConfig:
    dir: str = opt("runs/default", "output directory: adapter (PEFT layout), checkpoints, metrics, plots")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig, "output": OutputConfig}
Number = Union[int, float]
