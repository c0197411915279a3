"""One classification-head training run per configuration: (seconds per step, loss per step).

The case (`load_case`): examples/sms_spam.yaml (SMS spam, undersampled to 747 + 747, stratified
70/10/20 split) as `tunesmith train` reads it, with the timed run's settings: max_length 64,
batch size 8, constant lr (no warm-up), no evaluation (keep_best off), a loss logged every step.
Everything else stays at the head mode's defaults (registry ModeSpec.defaults -> head.DEFAULTS):
LoRA r16 / alpha 32 / dropout 0 on every linear layer of the embedded SmolLM2-135M-Instruct, a
linear head on the last real token, AdamW lr 1e-3, weight decay 0.1, clip 1.0, batches grouped
by length with spam and ham mixed (epoch_order with lengths and strata, as fit() draws them).

Configurations:
- peft-trainer-bf16: AutoModelForSequenceClassification.from_pretrained(num_labels=2) + PEFT LoRA
  (task_type SEQ_CLS, the same r/alpha/targets, `score` in modules_to_save) + transformers'
  Trainer with bf16=True (autocast), its default optimizer (fused AdamW), the same lr, decay and
  clipping, fed the very batches tunesmith draws (sequential sampler). config.pad_token_id is a
  special token that never occurs in the texts (not EOS, which SmolLM2 pads with), so
  transformers pools at the last real token as tunesmith does. Trains the LoRA A/B + `score`.
- peft-trainer-fp32: the same in fp32 throughout.
- tunesmith: the head mode's own fit() (tasks/classify/modes/head.py fit_head: build, the
  frozen-prefix cache check, the training loop) with the config above; trains LoRA A/B + the head
  (with a bias; transformers' score has none). With LoRA in block 0 nothing below it is frozen, so
  no prefix is cached: every step runs the whole model forward and backward, as the peer does.
- tunesmith-<option>-...: the same with options: fp32w / bf16w (model.dtype), fp32 (train.precision,
  no autocast), sdpa / eager (model.attention).

Both sides start from the same backbone weights, the same LoRA A/B (common.set_lora_weights) and
the same head weights (set_head_weights; tunesmith's head bias 0).
"""

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from common import DATA, MEASURED_TRAINER_ARGS, StepClock, set_lora_weights, trainer_clock

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "sms_spam.yaml"
SMS = DATA / "sms_spam" / "SMSSpamCollection"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS = [
    f"data.train={SMS}",
    "data.max_length=64",
    "train.batch_size=8",
    "train.scheduler=constant",
    "train.warmup_steps=0",
    "train.keep_best=false",
    "train.log_every=1",
    "train.resume=false",
]
OPTIONS = {
    "fp32w": "model.dtype=float32",
    "bf16w": "model.dtype=bfloat16",
    "fp32": "train.precision=fp32",
    "sdpa": "model.attention=sdpa",
    "eager": "model.attention=eager",
}


@dataclass
class Case:
    cfg: object  # RunConfig
    splits: object  # LabelledSplits, as the recipe hands them to the mode
    ids: list  # token ids of each training example (as HeadPredictor.encode makes them)
    labels: list  # class index of each training example
    batches: list  # example indices of each step, as the head mode's fit() draws them


def overrides_of(config: str) -> list[str]:
    if not config.startswith("tunesmith"):
        return []
    unknown = [o for o in config.split("-")[1:] if o not in OPTIONS]
    if unknown:
        raise SystemExit(f"unknown option(s) {unknown} in {config}; known: {sorted(OPTIONS)}")
    return [OPTIONS[o] for o in config.split("-")[1:]]


def load_case(config: str, steps: int, out_dir: str) -> Case:
    """The config, splits and batches of `steps` steps, as recipes.classify.run prepares them."""
    from transformers import AutoTokenizer

    from tunesmith.data.classification import load_labelled_splits
    from tunesmith.data.resampling import RESAMPLERS, resample_examples
    from tunesmith.data.sampling import epoch_order
    from tunesmith.models.loading import default_model_dir
    from tunesmith.tasks import load_config
    from tunesmith.tasks.classify.modes import get_mode
    from tunesmith.utils.seeding import seed_everything

    overrides = [*SETTINGS, f"train.max_steps={steps}", f"output.dir={out_dir}"]
    cfg = load_config(str(CONFIG), overrides + overrides_of(config))
    seed_everything(cfg.train.seed)
    splits = load_labelled_splits(cfg.data, cfg.train.seed, cfg.task.labels)
    if cfg.data.balance in RESAMPLERS and not get_mode(cfg.task.mode).feature_space:
        splits.train = resample_examples(cfg.data.balance, splits.train, cfg.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    t = cfg.train
    ids = [
        tokenizer(e.text, truncation=True, max_length=cfg.data.max_length)["input_ids"]
        for e in splits.train
    ]
    # fit(): lengths only with data.group_by_length, strata = the labels; epoch 0 -> seed + 0
    lengths = [len(x) for x in ids] if cfg.data.group_by_length else None
    order = epoch_order(len(ids), t.batch_size, t.seed, lengths, [e.label for e in splits.train])
    assert steps * t.batch_size <= len(order), "more steps than one epoch of data"
    batches = [order[i * t.batch_size : (i + 1) * t.batch_size] for i in range(steps)]
    labels = [splits.labels.index(e.label) for e in splits.train]
    return Case(cfg, splits, ids, labels, batches)


def set_head_weights(linear: torch.nn.Linear, seed: int) -> None:
    """The head's weight from a seed (nn.Linear's uniform bound), its bias (if any) zero."""
    gen = torch.Generator().manual_seed(seed * 1000 + 999)
    bound = 1 / linear.weight.shape[1] ** 0.5
    with torch.no_grad():
        w = torch.rand(linear.weight.shape, generator=gen) * 2 * bound - bound
        linear.weight.copy_(w.to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.zero_()


def run(config: str, case: Case) -> dict:
    """{'times': seconds of each step, 'losses': training loss of each step, ...}."""
    if config.startswith("peft-trainer"):
        return _peft_trainer(case, bf16=config.endswith("bf16"))
    return _tunesmith(case)


def _peft_trainer(case: Case, bf16: bool) -> dict:
    import peft
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    from tunesmith.models.loading import default_model_dir
    from tunesmith.models.sequence_classification import classification_pad_id
    from tunesmith.tasks.classify.modes.common import pad_batch

    cfg, method = case.cfg, case.cfg.method
    pad = classification_pad_id(AutoTokenizer.from_pretrained(default_model_dir()))
    assert all(pad not in case.ids[i] for idx in case.batches for i in idx)
    model = AutoModelForSequenceClassification.from_pretrained(
        default_model_dir(),
        num_labels=len(case.splits.labels),
        pad_token_id=pad,
        dtype=torch.float32,
    )
    set_head_weights(model.score, cfg.train.seed)
    lora = peft.LoraConfig(
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=method.target_modules,
        task_type="SEQ_CLS",
        modules_to_save=["score"],
    )
    model = peft.get_peft_model(model, lora)
    n = set_lora_weights(model, cfg.train.seed, ALL_LINEAR)
    assert n == 7 * model.config.num_hidden_layers, f"{n} LoRA layers"
    rows = [
        {"input_ids": case.ids[i], "labels": case.labels[i]} for idx in case.batches for i in idx
    ]

    clock = trainer_clock()

    def collate(features):
        ids, mask = pad_batch([f["input_ids"] for f in features], pad)
        labels = torch.tensor([f["labels"] for f in features])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    t = cfg.train
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out,
            per_device_train_batch_size=t.batch_size,
            max_steps=len(case.batches),
            learning_rate=t.lr,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            bf16=bf16,
            **MEASURED_TRAINER_ARGS,
            seed=t.seed,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=rows, callbacks=[clock], data_collator=collate
        )
        trainer.train()
    return {
        "times": clock.times(),
        "losses": clock.losses,
        "optimizer": getattr(args.optim, "value", str(args.optim)),
    }


def _tunesmith(case: Case) -> dict:
    """get_mode("head").fit as the recipe calls it; the loop's train() is wrapped to set the
    starting weights (after build(), before the optimizer exists) and to time the steps."""
    from tunesmith.tasks.classify.modes import common as mode_common
    from tunesmith.tasks.classify.modes import get_mode

    cfg, clock, seen, prepared = case.cfg, StepClock(), [], {}
    real_train = mode_common.train

    def timed_train(model, examples, train_cfg, out, objective, **kw):
        prepared["lora_layers"] = set_lora_weights(model, train_cfg.seed, ALL_LINEAR)
        set_head_weights(model.head, train_cfg.seed)
        prepared["prefix_cached"] = model.prefix is not None

        real_collate = objective.collate

        def collate(items):
            seen.append([e.input_ids for e in items])
            return real_collate(items)

        timed = dataclasses.replace(objective, collate=clock.timed(collate))
        return real_train(model, examples, train_cfg, out, timed, **kw)

    mode_common.train = timed_train
    try:
        with clock:
            _, info = get_mode(cfg.task.mode).fit(cfg, case.splits, Path(cfg.output.dir))
    finally:
        mode_common.train = real_train
    expected = [[case.ids[i] for i in idx] for idx in case.batches]
    if seen != expected:
        raise SystemExit("tunesmith trained on other batches than the peer is given")
    records = [
        json.loads(line)
        for line in (Path(cfg.output.dir) / "metrics.jsonl").read_text().splitlines()
    ]
    return {
        "times": clock.times(),
        "losses": [r["loss"] for r in records if "loss" in r],
        **prepared,
        "cache_seconds": info.get("cache_seconds"),
        "trainable_params": info.get("trainable_params"),
    }
