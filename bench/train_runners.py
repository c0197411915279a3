"""One LoRA SFT run per configuration: (seconds per step, loss per step) over the given batches.

Configurations (all: LoRA r=8, alpha=16 on q_proj/v_proj, no dropout, AdamW, constant lr, clip 1.0):
- peft-trainer-bf16: HF PEFT + transformers Trainer with bf16=True (autocast), padded batches.
- peft-loop-fp32 / peft-loop-bf16: HF PEFT + a plain PyTorch loop, fp32 or bf16 autocast.
- peft-trainer-fp32: the same in fp32 throughout, for CPUs without native bf16 instructions (there
  PyTorch emulates bf16 matmuls, hundreds of times slower).
- tunesmith: tunesmith.training.train with every setting at the default of `tunesmith train`
  (model.dtype, model.attention, data.packing, train.precision); the loss runs the output head
  only where labels are (objectives.sft).
- tunesmith-<option>-...: the same with options changed: bf16w / fp32w (weights dtype), pack /
  nopack, sdpa / eager (attention), fp32 (no autocast), full (full fine-tuning instead of LoRA),
  e.g. tunesmith-fp32w-sdpa-nopack.
- trainer-full-bf16 / -fp32: full fine-tuning (every weight trained) with transformers' Trainer,
  the reference of the full rows.
"""

import json
import tempfile
import time
from pathlib import Path

import torch
from common import MEASURED_TRAINER_ARGS, TARGETS, Hyper, StepClock, set_lora_weights, trainer_clock

OPTIONS = {
    "bf16w": ("dtype", "bfloat16"),
    "fp32w": ("dtype", "float32"),
    "pack": ("packing", True),
    "nopack": ("packing", False),
    "sdpa": ("attention", "sdpa"),
    "eager": ("attention", "eager"),
    "fp32": ("precision", "fp32"),
    "full": ("method", "full"),
}


def tunesmith_settings(config: str) -> dict:
    """The settings a tunesmith-... configuration name stands for (defaults where not named)."""
    from tunesmith.config.schema import DataConfig, ModelConfig, TrainConfig

    settings = {
        "dtype": ModelConfig().dtype,
        "attention": ModelConfig().attention,
        "packing": DataConfig().packing,
        "precision": TrainConfig().precision,
        "method": "lora",
    }
    for option in config.split("-")[1:]:
        if option not in OPTIONS:
            raise SystemExit(f"unknown option {option!r} in {config}; known: {sorted(OPTIONS)}")
        key, value = OPTIONS[option]
        settings[key] = value
    return settings


def run(config: str, examples: list, batches: list[list[int]], hyper: Hyper) -> dict:
    """{'times': seconds of each step, 'losses': training loss of each step}."""
    if config.startswith(("peft-trainer", "trainer-full")):
        full = config.startswith("trainer-full")
        return _peft_trainer(examples, batches, hyper, bf16=config.endswith("bf16"), full=full)
    if config.startswith("peft-loop"):
        return _peft_loop(examples, batches, hyper, bf16=config.endswith("bf16"))
    return _tunesmith(examples, batches, hyper, **tunesmith_settings(config))


def _peft_model(hyper: Hyper, full: bool = False):
    """The embedded model with PEFT's LoRA, or as loaded (every weight trainable) when full."""
    import peft

    import tunesmith

    model, tokenizer = tunesmith.load_model("default")
    if full:
        return model, tokenizer
    cfg = peft.LoraConfig(
        r=hyper.r,
        lora_alpha=hyper.alpha,
        lora_dropout=0.0,
        target_modules=TARGETS,
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(model, cfg)
    set_lora_weights(model, hyper.seed)
    return model, tokenizer


def _peft_loop(examples, batches, hyper: Hyper, bf16: bool) -> dict:
    from tunesmith.data import collate

    model, tokenizer = _peft_model(hyper)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=hyper.lr)
    times, losses = [], []
    for idx in batches:
        start = time.perf_counter()
        batch = collate([examples[i] for i in idx], tokenizer.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - start)
    return {"times": times, "losses": losses}


def _peft_trainer(examples, batches, hyper: Hyper, bf16: bool, full: bool = False) -> dict:
    from transformers import Trainer, TrainingArguments

    from tunesmith.data import Example, collate

    model, tokenizer = _peft_model(hyper, full)
    rows = [
        {"input_ids": examples[i].input_ids, "labels": examples[i].labels}
        for idx in batches
        for i in idx
    ]

    clock = trainer_clock()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out,
            per_device_train_batch_size=hyper.batch_size,
            max_steps=len(batches),
            learning_rate=hyper.lr,
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=bf16,
            **MEASURED_TRAINER_ARGS,
            seed=hyper.seed,
            optim="adamw_torch",
            remove_unused_columns=False,
        )
        pad = tokenizer.pad_token_id
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=rows,
            callbacks=[clock],
            data_collator=lambda f: collate([Example(x["input_ids"], x["labels"]) for x in f], pad),
        )
        trainer.train()
    return {"times": clock.times(), "losses": clock.losses}


def _tunesmith(
    examples,
    batches,
    hyper: Hyper,
    dtype: str,
    precision: str,
    packing: bool,
    attention: str,
    method: str,
) -> dict:
    import tunesmith
    from tunesmith.config.schema import DataConfig, TrainConfig
    from tunesmith.data.packing import batching
    from tunesmith.methods.full import FullConfig
    from tunesmith.methods.lora import LoraConfig
    from tunesmith.models.attention import set_attention
    from tunesmith.models.frozen_weights import weights_for_training
    from tunesmith.training import sft_objective, train

    model, tokenizer = tunesmith.load_model("default", dtype=dtype)
    set_attention(model, attention)
    if method == "full":
        tunesmith.apply_method(model, FullConfig())
    else:
        lora = LoraConfig(r=hyper.r, alpha=hyper.alpha, target_modules=TARGETS)
        tunesmith.apply_method(model, lora)
        set_lora_weights(model, hyper.seed)
    cfg = TrainConfig(
        max_steps=len(batches),
        batch_size=hyper.batch_size,
        lr=hyper.lr,
        scheduler="constant",
        precision=precision,
        log_every=1,
        seed=hyper.seed,
        resume=False,
        max_grad_norm=1.0,
    )
    weights_for_training(model, dtype, cfg.precision)  # as the recipes do before training
    data = DataConfig(packing=packing, max_length=hyper.max_length)
    objective = sft_objective(
        tokenizer.pad_token_id, **batching(data, examples, tokenizer.pad_token_id)
    )
    clock = StepClock()
    objective.collate = clock.timed(objective.collate)
    with tempfile.TemporaryDirectory() as out, clock:
        train(model, examples, cfg, Path(out), objective)
        records = [
            json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()
        ]
    return {
        "times": clock.times(),
        "losses": [r["loss"] for r in records if "loss" in r],
    }
