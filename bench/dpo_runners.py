"""One LoRA DPO run per configuration: seconds per step, loss per step, reference precompute time.

Configurations (all: LoRA r=8, alpha=16 on q_proj/v_proj, no dropout, sigmoid loss, beta 0.1,
AdamW, constant lr, no weight decay, clip 1.0, batch 4 pairs = 8 rows):
- trl: TRL DPOTrainer + PEFT (peft_config), at its defaults: fp32 weights with bf16 autocast,
  gradient checkpointing on, the reference (adapter disabled) run at every step, padded batches.
- trl-nogc: the same with gradient_checkpointing=False.
- trl-precompute: precompute_ref_log_probs=True (reference scored once, before training).
- tunesmith: tunesmith's dpo defaults: model.dtype=auto (frozen weights stored in bf16 under bf16
  autocast), model.attention=auto, train.precision=auto (bf16 autocast on a CPU with native bf16),
  precomputed reference log-probs, one forward over chosen + rejected, the output head only at
  the response tokens, activation checkpointing (train.activation_checkpointing: auto, which is
  on for dpo).
- tunesmith-bf16w: the same with bf16 weights (model.dtype=bfloat16).
- tunesmith-bf16w-ckpt: bf16 weights and train.activation_checkpointing=true (each block's
  activations recomputed in the backward, as TRL's default gradient checkpointing does).
- tunesmith-nockpt: train.activation_checkpointing=false (the dpo default is true).
- tunesmith-noprecompute: dpo.precompute_reference=false (a reference forward every step).
- *-fp32: fp32 throughout, for CPUs without native bf16 instructions.

Every configuration gets the same token ids (tunesmith's encoding of the records; TRL's own
tokenisation is bypassed), the same pairs in the same order and the same initial LoRA weights.
"""

import json
import tempfile
import time
from functools import partial
from pathlib import Path

from common import MEASURED_TRAINER_ARGS, TARGETS, StepClock, set_lora_weights, trainer_clock

CONFIGS = [
    "trl",
    "trl-nogc",
    "trl-precompute",
    "tunesmith",
    "tunesmith-bf16w",
    "tunesmith-bf16w-ckpt",
    "tunesmith-nockpt",
    "tunesmith-noprecompute",
    "trl-fp32",
    "trl-nogc-fp32",
    "tunesmith-fp32",
]


def run(config: str, pairs: list, batches: list[list[int]], hyper) -> dict:
    """{'times': seconds of each step, 'losses': loss of each step, 'precompute_s': seconds}."""
    fp32 = config.endswith("-fp32")
    if config.startswith("trl"):
        return _trl(
            pairs,
            batches,
            hyper,
            bf16=not fp32,
            checkpointing="nogc" not in config,
            precompute=config == "trl-precompute",
        )
    return _tunesmith(
        pairs,
        batches,
        hyper,
        dtype="bfloat16" if "bf16w" in config else ("float32" if fp32 else "auto"),
        precision="fp32" if fp32 else "bf16",
        precompute=config != "tunesmith-noprecompute",
        checkpointing="true"
        if config.endswith("-ckpt")
        else ("false" if "nockpt" in config else "auto"),
    )


def _ordered(pairs: list, batches: list[list[int]]) -> list:
    """The pairs of the steps in step order, then the rest (so a precompute scores all of them)."""
    used = [i for idx in batches for i in idx]
    rest = sorted(set(range(len(pairs))) - set(used))
    return [pairs[i] for i in used + rest]


def _trl(pairs, batches, hyper, bf16: bool, checkpointing: bool, precompute: bool) -> dict:
    import peft
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    import tunesmith

    class PreTokenized(DPOTrainer):
        # The rows already hold prompt_ids / chosen_ids / rejected_ids (tunesmith's encoding).
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    clock = trainer_clock()

    model, tokenizer = tunesmith.load_model("default")
    rows = [
        {k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
        for p in _ordered(pairs, batches)
    ]
    lora = peft.LoraConfig(
        r=hyper.r, lora_alpha=hyper.alpha, lora_dropout=0.0, target_modules=TARGETS
    )
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            out,
            per_device_train_batch_size=hyper.batch_size,
            max_steps=len(batches),
            learning_rate=hyper.lr,
            weight_decay=0.0,
            max_grad_norm=1.0,
            beta=hyper.beta,
            max_length=hyper.max_length,
            bf16=bf16,
            **MEASURED_TRAINER_ARGS,
            gradient_checkpointing=checkpointing,
            precompute_ref_log_probs=precompute,
            seed=hyper.seed,
            optim="adamw_torch",
        )
        start = time.perf_counter()
        trainer = PreTokenized(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[clock],
        )
        setup_s = time.perf_counter() - start  # includes the reference precompute when enabled
        set_lora_weights(trainer.model, hyper.seed)
        trainer.train()
    return {
        "times": clock.times(),
        "losses": clock.losses,
        "precompute_s": setup_s if precompute else 0.0,
    }


def _tunesmith(
    pairs,
    batches,
    hyper,
    dtype: str,
    precision: str,
    precompute: bool,
    checkpointing: str,
) -> dict:
    """tunesmith.recipes.dpo's pieces, in its order: build_model, attach_reference, train."""
    import tunesmith
    from tunesmith.recipes import dpo
    from tunesmith.recipes.common import build_model
    from tunesmith.recipes.preference_common import collate_with_reference
    from tunesmith.training import Objective, train

    with tempfile.TemporaryDirectory() as out:
        cfg = tunesmith.load_config(
            None,
            [
                "task.type=dpo",
                "model.name=default",
                f"model.dtype={dtype}",
                "method.name=lora",
                f"method.r={hyper.r}",
                f"method.alpha={hyper.alpha}",
                f"method.target_modules=[{','.join(TARGETS)}]",
                f"dpo.beta={hyper.beta}",
                f"dpo.precompute_reference={str(precompute).lower()}",
                f"train.max_steps={len(batches)}",
                f"train.batch_size={hyper.batch_size}",
                f"train.lr={hyper.lr}",
                "train.scheduler=constant",
                "train.weight_decay=0.0",
                "train.max_grad_norm=1.0",
                f"train.precision={precision}",
                "train.log_every=1",
                f"train.seed={hyper.seed}",
                "train.resume=false",
                f"train.activation_checkpointing={checkpointing}",
                f"output.dir={out}",
            ],
        )
        model, tokenizer = build_model(cfg)
        set_lora_weights(model, hyper.seed)
        pad = tokenizer.pad_token_id
        start = time.perf_counter()
        if precompute:
            dpo.attach_reference(model, pairs, cfg, pad, Path(out) / dpo.REFERENCE_FILE)
        precompute_s = time.perf_counter() - start
        clock = StepClock()
        collate = clock.timed(partial(collate_with_reference, pad_id=pad))
        objective = Objective(collate, partial(dpo.pair_loss, cfg=cfg), splittable=True)
        # train() draws epoch_order(len(pairs), batch, seed): the batches given to TRL
        with clock:
            train(model, pairs, cfg.train, Path(out), objective)
        records = [
            json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()
        ]
    return {
        "times": clock.times(),
        "losses": [r["loss"] for r in records if "loss" in r],
        "precompute_s": precompute_s,
    }
