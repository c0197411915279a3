"""Knowledge distillation (task.type=distill): the student (model.name with cfg.method, optionally
cut to model.keep_layers of its blocks) learns the teacher's next-token distributions on the
response tokens of instruction/chat data.

Where the teacher's targets come from:
- on the fly (distill.cache_top_k=0): the teacher runs on each batch in the same step;
- top-k cache (distill.cache_top_k=k): the teacher's top-k log-probs per response position, made
  once and kept on disk (recipes/distill_teacher.py); the teacher is then freed before training,
  and a later run or resume with the same fingerprint never loads it;
- sequence-level (distill.sequence_level): the training answers are first replaced by the
  teacher's own greedy answers;
- on-policy (distill.lmbda): each batch, with probability lmbda, is replaced by the student's
  sampled answers to its prompts, scored by the live teacher (GKD).

Writes what an SFT run writes (adapter, best/, checkpoints/last, metrics, curves, samples), plus
student/: the trained student merged into a plain transformers directory when the method merges.
"""

import gc
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..config.schema import RunConfig
from ..data import IGNORE, Example, collate, load_splits
from ..data.encode import encode_record
from ..data.readers import SOURCE
from ..errors import DataError
from ..methods import get_method, merge_and_unload
from ..objectives.distill_step import CachedTeacher, DistillSpec, LiveTeacher, distill_loss
from ..rl.rollout import Sampling, sample
from ..training.objective import Objective
from ..utils.memory import peak_rss_mb
from .common import build_model
from .distill_teacher import (
    build_cache,
    cache_dir,
    fingerprint,
    load_teacher,
    read_cache,
    teacher_answers,
    write_cache,
)
from .forgetting import mix_replay
from .preference_common import start_run
from .sft import train_language_model

log = logging.getLogger(__name__)


@dataclass
class Indexed:
    """A training example and its row in the teacher's top-k cache."""

    example: Example
    index: int

    @property
    def input_ids(self) -> list[int]:
        return self.example.input_ids


def spec_of(dcfg) -> DistillSpec:
    return DistillSpec(dcfg.loss, dcfg.temperature, dcfg.alpha, dcfg.beta)


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Distil cfg.distill.teacher into the student; returns the final metrics (metrics.json)."""
    start_run(cfg)
    student, tokenizer = build_model(cfg)
    splits = load_splits(cfg.data, tokenizer, cfg.train.seed)
    if not any(e.prompt_messages for e in splits.train):
        raise DataError(
            f"{cfg.data.train}: distillation needs prompts and answers (instruction or chat "
            f"records); these examples are plain text"
        )
    splits.train = mix_replay(splits.train, cfg.data, tokenizer, cfg.train.seed)
    teacher = _Teacher(cfg, student, tokenizer)
    if cfg.distill.sequence_level:
        splits.train = with_teacher_answers(splits.train, teacher.get(), tokenizer, cfg)
    cache = _top_k_cache(cfg, splits.train, teacher, tokenizer.pad_token_id)
    if cache is not None and cfg.distill.lmbda == 0:
        teacher.release()  # training reads the cache only
    else:
        teacher.get()  # on the fly or on-policy: the teacher scores batches during training
    objective = distill_objective(cfg, splits.train, teacher, tokenizer, cache)
    extra = {
        "teacher_in_memory": teacher.model is not None,
        "peak_rss_mb_before_training": round(peak_rss_mb(), 1),
    }
    if cache is not None:
        extra["teacher_cache_mb"] = round(cache.megabytes, 3)
    items = [Indexed(e, i) for i, e in enumerate(splits.train)]
    splits.train = items
    metrics = train_language_model(cfg, student, tokenizer, splits, objective, progress, extra)
    save_student(cfg, student, tokenizer)
    return metrics


class _Teacher:
    """The teacher, loaded on first use (a run that finds its cache never loads it)."""

    def __init__(self, cfg, student, tokenizer):
        self.cfg, self.student, self.tokenizer, self.model = cfg, student, tokenizer, None

    def get(self):
        if self.model is None:
            self.model = load_teacher(
                self.cfg.distill, self.cfg.model.dtype, self.student, self.tokenizer
            )
        return self.model

    def release(self) -> None:
        self.model = None
        gc.collect()


def _top_k_cache(cfg, examples: list, teacher: _Teacher, pad_id: int):
    """The top-k cache for `examples` (read, or built and written), or None without one."""
    if not cfg.distill.cache_top_k:
        return None
    directory, stamp = cache_dir(cfg), fingerprint(cfg.distill, examples)
    cache = read_cache(directory, stamp)
    if cache is None:
        log.info(
            "teacher top-%d cache: scoring %d examples", cfg.distill.cache_top_k, len(examples)
        )
        cache = build_cache(teacher.get(), examples, cfg.distill, pad_id, cfg.eval.batch_size)
        write_cache(cache, directory, stamp)
    else:
        log.info("teacher top-%d cache read from %s", cfg.distill.cache_top_k, directory)
    return cache


def with_teacher_answers(examples: list, teacher, tokenizer, cfg) -> list:
    """Sequence-level KD: each example with a prompt gets the teacher's answer instead of its own."""
    prompted = [e for e in examples if e.prompt_messages]
    answers = iter(teacher_answers(teacher, tokenizer, prompted, cfg))
    out = []
    for e in examples:
        if not e.prompt_messages:
            out.append(e)
            continue
        record = {
            "messages": [*e.prompt_messages, {"role": "assistant", "content": next(answers)}],
            SOURCE: "teacher answer",
        }
        new = encode_record(record, tokenizer, "chat", True, None)
        new.input_ids, new.labels = (
            new.input_ids[: cfg.data.max_length],
            new.labels[: cfg.data.max_length],
        )
        out.append(new)
    return out


def distill_objective(cfg, examples: list, teacher: _Teacher, tokenizer, cache) -> Objective:
    pad = tokenizer.pad_token_id
    spec = spec_of(cfg.distill)

    def loss(model, batch):
        if "teacher_ids" in batch:
            targets = CachedTeacher(batch["teacher_ids"], batch["teacher_logps"])
        else:
            targets = LiveTeacher(teacher.get(), batch, spec.temperature)
        value, n, metrics = distill_loss(model, batch, targets, spec)
        return value, n, {**metrics, "on_policy": float(batch.get("on_policy", 0.0))}

    updates = None
    if cfg.distill.lmbda > 0:
        updates = partial(on_policy_updates, tokenizer=tokenizer, dcfg=cfg.distill)
    lengths = [len(e.input_ids) for e in examples] if cfg.data.group_by_length else None
    collate_fn = partial(collate_distill, pad_id=pad, cache=cache)
    return Objective(collate_fn, loss, lengths, updates, uses_starting_weights=False)


def collate_distill(items: list, pad_id: int, cache=None) -> dict:
    """Padded batch of the examples, with the cached teacher rows (in mask order) when cached."""
    batch = collate([it.example for it in items], pad_id)
    batch["prompts"] = [prompt_of(it.example) for it in items]
    if cache is not None:
        batch["teacher_ids"], batch["teacher_logps"] = cache.rows([it.index for it in items])
    return batch


def prompt_of(example: Example) -> list[int]:
    """The tokens before the first answer token (empty for plain text)."""
    first = next((i for i, label in enumerate(example.labels) if label != IGNORE), 0)
    return example.input_ids[:first]


def on_policy_updates(model, batches: list, tokenizer, dcfg) -> list:
    """One update; each micro-batch, with probability dcfg.lmbda (torch's RNG, which checkpoints
    keep), becomes the student's sampled answers to its prompts (scored by the live teacher)."""
    sampling = Sampling(dcfg.max_new_tokens, dcfg.sample_temperature)
    planned = []
    for batch in batches:
        draw = float(torch.rand(()))
        if draw < dcfg.lmbda and all(batch["prompts"]):
            rollout = sample(
                model, tokenizer, left_padded(batch["prompts"], tokenizer.pad_token_id), sampling
            )
            batch = {**rollout.batch(), "on_policy": 1.0}
        planned.append(batch)
    return [planned]


def left_padded(prompts: list, pad_id: int) -> dict:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return {"input_ids": ids, "attention_mask": mask, "records": [None] * len(prompts)}


def save_student(cfg, student, tokenizer) -> None:
    """output.dir/student: the trained student as a plain transformers directory (methods that
    merge), so it loads with AutoModelForCausalLM.from_pretrained and serves without tunesmith."""
    if not get_method(cfg.method.name).can_merge:
        log.info(
            "method %s does not merge: no student/ directory (the adapter is saved)",
            cfg.method.name,
        )
        return
    target = Path(cfg.output.dir) / "student"
    merged = merge_and_unload(student)
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    log.info("student saved as a transformers directory in %s", target)
