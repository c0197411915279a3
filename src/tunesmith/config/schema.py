"""The config schema: one dataclass per concern (model, method, data, train, eval, output)."""

from dataclasses import dataclass, field
from typing import Optional, Union

from ..errors import ConfigError
from ..utils.hardware import has_native_bf16
from .distributed import DistributedConfig
from .fields import opt, warn_if_bf16_is_emulated
from .model import ModelConfig
from .task import TaskConfig


@dataclass
class MethodConfig:
    """Base of every method's config; `name` picks the method from the registry."""

    name: str = opt("lora", "registered method name (see `tunesmith methods`)")


# eval.metrics: evaluation/metrics.py's GENERATION_METRICS
GENERATION_METRICS = ("exact_match", "contains", "rouge", "bleu", "chrf")
# data.balance: the first three need no imblearn; the rest are data/resampling.py's RESAMPLERS
BALANCE_CHOICES = (
    "none", "undersample", "oversample", "random_oversample", "random_undersample", "rose",
    "smote", "adasyn", "cluster_centroids", "tomek", "enn", "renn",
)  # fmt: skip


@dataclass
class DataConfig:
    train: Optional[str] = opt(
        None, "training file (JSONL, JSON, CSV, TSV, Parquet) or a saved HF dataset directory"
    )
    eval: Optional[str] = opt(None, "validation file; when absent, split off from data.train")
    test: Optional[str] = opt(None, "test file; when absent, split off from data.train")
    format: str = opt("auto", "record format: auto, text, instruction or chat")
    max_length: int = opt(
        512, "token limit per example; longer examples are truncated (and counted)"
    )
    split: list = opt(
        [0.7, 0.1, 0.2], "train/validation/test fractions used when only data.train is given"
    )
    completion_only: bool = opt(
        True, "compute the loss on response tokens only (instruction and chat formats)"
    )
    system_prompt: Optional[str] = opt(
        None, "system message put before every instruction/chat example"
    )
    limit: Optional[int] = opt(None, "use only the first N training records (quick experiments)")
    packing: bool = opt(
        False,
        "pack each micro-batch's examples into rows of up to data.max_length tokens, "
        "each example attending only to itself (less padding, same loss)",
    )
    group_by_length: bool = opt(
        False,
        "batch examples of similar length together (less padding; still each "
        "example once per epoch)",
    )
    file_type: str = opt(
        "auto",
        "file type when the name does not tell: auto (from the suffix), jsonl, json, csv, tsv, parquet or txt",
    )
    columns: list = opt(
        [], "column names of a CSV/TSV file without a header row, e.g. [label, text]"
    )
    text_field: str = opt("text", "classification: field holding the text")
    text_pair_field: Optional[str] = opt(
        None, "classification: field holding an optional second text (pairs)"
    )
    label_field: str = opt("label", "classification: field holding the label")
    task_field: str = opt(
        "task_ids",
        "field holding an example's task id (an int), given to the model as task_ids "
        "(multitask prompt tuning); examples without it are task 0",
    )
    replay: Optional[str] = opt(
        None,
        "file of general or earlier-task data (any data.train format, e.g. a .txt of general "
        "text) mixed into training against forgetting; its share is data.replay_ratio",
    )
    replay_ratio: float = opt(
        0.0, "share of the training examples drawn from data.replay, in [0, 1); 0.2 is typical"
    )
    balance: str = opt(
        "none",
        "classification: none; undersample (drop majority records at random before splitting, "
        "so every split is balanced); oversample (repeat minority training records after splitting); "
        "or an imbalanced-learn sampler on the training split: random_oversample, random_undersample "
        "(any mode), rose, smote, adasyn, cluster_centroids, tomek, enn, renn (feature space: "
        "task.mode=features)",
    )

    def __post_init__(self):
        if self.file_type not in ("auto", "jsonl", "json", "csv", "tsv", "parquet", "txt"):
            raise ConfigError(
                f"data.file_type must be auto, jsonl, json, csv, tsv, parquet or txt, got {self.file_type!r}"
            )
        if self.balance not in BALANCE_CHOICES:
            raise ConfigError(
                f"data.balance must be one of {', '.join(BALANCE_CHOICES)}, got {self.balance!r}"
            )
        if not 0 <= self.replay_ratio < 1:
            raise ConfigError(f"data.replay_ratio must be in [0, 1), got {self.replay_ratio}")
        if bool(self.replay) != bool(self.replay_ratio):
            raise ConfigError(
                f"data.replay and data.replay_ratio go together: got replay={self.replay!r}, "
                f"replay_ratio={self.replay_ratio}; set both (e.g. replay_ratio: 0.2) or neither"
            )
        if self.format not in ("auto", "text", "instruction", "chat"):
            raise ConfigError(
                f"data.format must be auto, text, instruction or chat, got {self.format!r}"
            )
        if self.max_length < 8:
            raise ConfigError(f"data.max_length must be >= 8, got {self.max_length}")
        if (
            len(self.split) != 3
            or any(f < 0 for f in self.split)
            or abs(sum(self.split) - 1) > 1e-6
        ):
            raise ConfigError(
                f"data.split must be three non-negative fractions summing to 1, got {self.split}"
            )


@dataclass
class TrainConfig:
    epochs: float = opt(1.0, "passes over the training data (ignored when train.max_steps > 0)")
    max_steps: int = opt(0, "optimizer steps to run; 0 = derive from train.epochs")
    batch_size: int = opt(
        8,
        "examples per micro-batch and process (the global batch is processes x this x grad_accum)",
    )
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float = opt(2e-4, "peak learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear warm-up steps")
    scheduler: str = opt("linear", "learning-rate decay after warm-up: linear, cosine or constant")
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 disables clipping")
    seed: int = opt(42, "seed for initialisation, shuffling, dropout and splits")
    precision: str = opt(
        "auto",
        "fp32, bf16 (autocast on CPU; weights stay fp32) or auto (bf16 where the CPU "
        "has native bf16 instructions, else fp32; the saved config shows the choice)",
    )
    eval_every: int = opt(
        0,
        "run validation every N steps (0: only at the end; at every epoch's end with "
        "train.keep_best or train.early_stopping_patience)",
    )
    keep_best: bool = opt(
        False,
        "evaluate on the validation split (each epoch, or every train.eval_every steps) and "
        "restore the weights of the best evaluation (train.best_metric) at the end",
    )
    best_metric: str = opt(
        "eval_loss",
        "what train.keep_best and early stopping compare: eval_loss, or another metric the "
        "evaluation reports (eval_accuracy); a name containing 'loss' is minimised, others maximised",
    )
    early_stopping_patience: int = opt(
        0, "stop after N evaluations in a row without a better train.best_metric (0: never)"
    )
    save_every: int = opt(
        0, "write a resumable checkpoint every N steps (0: only at eval and the end)"
    )
    log_every: int = opt(10, "write metrics every N steps")
    resume: bool = opt(True, "continue from output.dir/checkpoints/last when it exists")
    activation_checkpointing: Union[bool, str] = opt(
        "auto",
        "keep only each transformer block's input in the forward and recompute the rest in "
        "the backward: activation memory of one block instead of all, 30-80 % more time per "
        "step; auto: the task's measured choice (dpo: true; the others false)",
    )
    tokens_per_pass: int = opt(
        0,
        "most padded tokens one forward/backward pass holds: a larger micro-batch runs as several "
        "passes whose gradients add up to the same update (less activation memory for large "
        "batches); 0: each micro-batch in one pass",
    )
    optimizer: str = opt(
        "adamw",
        "adamw, or adamw8bit (AdamW with its two moment buffers stored in 8 bits per value)",
    )
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    l2sp_lambda: float = opt(
        0.0,
        "against forgetting: add l2sp_lambda/2 * sum (w - w_start)^2 over the trained base "
        "weights (methods full, selected, sparse); 0 disables",
    )
    ewc_lambda: float = opt(
        0.0,
        "against forgetting (EWC): add ewc_lambda/2 * sum F (w - w_start)^2, F the diagonal "
        "Fisher on general text (eval.general_data, else data.replay); 0 disables",
    )
    ewc_samples: int = opt(32, "texts the EWC Fisher is estimated on (one backward each)")
    lwf_lambda: float = opt(
        0.0,
        "against forgetting (learning without forgetting): add lwf_lambda * KL(start || model) "
        "on the training tokens, the start being the model before training (for adapter "
        "methods the adapter disabled, no second copy); 0 disables",
    )

    def __post_init__(self):
        if self.activation_checkpointing not in (True, False, "auto"):
            raise ConfigError(
                f"train.activation_checkpointing must be true, false or auto, got "
                f"{self.activation_checkpointing!r}"
            )
        if self.tokens_per_pass < 0:
            raise ConfigError(
                f"train.tokens_per_pass must be a number of tokens >= 0, got {self.tokens_per_pass}"
            )
        for key in ("batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.scheduler not in ("linear", "cosine", "constant"):
            raise ConfigError(
                f"train.scheduler must be linear, cosine or constant, got {self.scheduler!r}"
            )
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ConfigError(f"train.optimizer must be adamw or adamw8bit, got {self.optimizer!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.precision == "auto":
            self.precision = "bf16" if has_native_bf16() else "fp32"
        elif self.precision == "bf16":
            warn_if_bf16_is_emulated("train.precision=bf16")
        for key in ("l2sp_lambda", "ewc_lambda", "lwf_lambda"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.early_stopping_patience < 0:
            raise ConfigError(
                f"train.early_stopping_patience must be >= 0 evaluations (0: off), got "
                f"{self.early_stopping_patience}"
            )
        if not self.best_metric.startswith("eval_"):
            raise ConfigError(
                f"train.best_metric must name a validation metric (eval_loss, eval_accuracy ...), "
                f"got {self.best_metric!r}"
            )
        if self.ewc_samples < 1:
            raise ConfigError(f"train.ewc_samples must be >= 1, got {self.ewc_samples}")
        if self.max_steps < 0 or self.epochs <= 0:
            raise ConfigError(
                f"train.max_steps must be >= 0 and train.epochs > 0, got {self.max_steps}, {self.epochs}"
            )


@dataclass
class EvalConfig:
    max_new_tokens: int = opt(64, "generation limit per example")
    do_sample: bool = opt(False, "sample instead of greedy decoding")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling mass")
    limit: Optional[int] = opt(200, "evaluate generation on at most N examples (None: all)")
    batch_size: int = opt(16, "prompts generated together")
    show: int = opt(3, "sample generations to print")
    general_data: Optional[str] = opt(
        None,
        "general text (e.g. ../shared/data/wikitext2/test.txt, one text per line) whose "
        "perplexity is measured before and after training, to see forgetting",
    )
    general_limit: int = opt(200, "texts of eval.general_data scored (the first N non-empty)")
    general_max_length: int = opt(256, "token limit per text of eval.general_data")
    metrics: list = opt(
        ["exact_match", "contains", "rouge"],
        "generation metrics: exact_match, contains, rouge (ROUGE-1/2/L as rouge-score), bleu and "
        "chrf (sacrebleu, 0-100; pip install 'tunesmith[metrics]')",
    )

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in GENERATION_METRICS]
        if unknown or not self.metrics:
            raise ConfigError(
                f"eval.metrics must be a non-empty list of {', '.join(GENERATION_METRICS)}; "
                f"got {self.metrics!r}"
            )


@dataclass
class OutputConfig:
    dir: str = opt(
        "runs/default", "output directory: adapter (PEFT layout), checkpoints, metrics, plots"
    )


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    # sections registered by tasks and classification modes (dpo, features, ...), by section name
    plugins: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        # Only reached when normal lookup fails: cfg.dpo reads the plug-in section "dpo".
        plugins = self.__dict__.get("plugins", {})
        if name in plugins:
            return plugins[name]
        raise AttributeError(f"the config has no section {name!r}")


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
    "task": TaskConfig,
}
Number = Union[int, float]
