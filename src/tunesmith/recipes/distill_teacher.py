"""The teacher of a distillation run: loading it, its top-k cache on disk, its answers.

The top-k cache holds, for every response position of every training example, the teacher's k
most probable token ids and their log-probs at distill.temperature (safetensors, flat rows with
per-example offsets) and a fingerprint of what made it (teacher, adapter, temperature, k and the
examples' tokens). A run, a later epoch or a resumed run whose fingerprint matches reads it and
never loads the teacher; anything else rebuilds it.
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..data import collate
from ..errors import ConfigError
from ..methods.io import load_adapter
from ..models import load_base_model
from ..objectives.distill import teacher_topk
from ..objectives.distill_step import LiveTeacher
from ..utils.files import atomic_write_text

log = logging.getLogger(__name__)
CACHE_FILE, CACHE_META = "topk.safetensors", "topk.json"


def load_teacher(dcfg, dtype: str, student, student_tokenizer):
    """The frozen teacher, checked to share the student's vocabulary."""
    teacher, tokenizer = load_base_model(dcfg.teacher, dtype)
    if dcfg.teacher_adapter:
        load_adapter(teacher, dcfg.teacher_adapter)
    teacher.eval().requires_grad_(False)
    check_same_vocabulary(teacher, tokenizer, student, student_tokenizer, dcfg.teacher)
    log.info(
        "teacher %s%s: %s parameters",
        dcfg.teacher,
        f" + {dcfg.teacher_adapter}" if dcfg.teacher_adapter else "",
        f"{sum(p.numel() for p in teacher.parameters()):,}",
    )
    return teacher


def check_same_vocabulary(teacher, teacher_tok, student, student_tok, name: str) -> None:
    t_out = teacher.get_output_embeddings().weight.shape[0]
    s_out = student.get_output_embeddings().weight.shape[0]
    if t_out != s_out or teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ConfigError(
            f"distill.teacher {name!r} does not share the student's tokenizer (output sizes "
            f"{t_out} and {s_out}); distillation compares next-token distributions, so both "
            f"need the same vocabulary"
        )


def fingerprint(dcfg, examples: list) -> str:
    """What the cache depends on: teacher, adapter, temperature, k and every example's tokens."""
    h = hashlib.sha256()
    meta = [dcfg.teacher, dcfg.teacher_adapter, dcfg.temperature, dcfg.cache_top_k]
    h.update(json.dumps(meta).encode())
    for e in examples:
        h.update(json.dumps([e.input_ids, e.labels]).encode())
    return h.hexdigest()


class TopKCache:
    """Per-example rows of the teacher's top-k (ids, log-probs) at the response positions."""

    def __init__(self, ids: torch.Tensor, logps: torch.Tensor, offsets: torch.Tensor):
        self.ids, self.logps, self.offsets = ids, logps, offsets  # (R, k), (R, k), (n + 1,)

    def rows(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, log-probs) of these examples' positions, concatenated in this order."""
        spans = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        return torch.cat([self.ids[s] for s in spans]), torch.cat([self.logps[s] for s in spans])

    @property
    def megabytes(self) -> float:
        size = self.ids.numel() * self.ids.element_size()
        return (size + self.logps.numel() * self.logps.element_size()) / 2**20


def cache_dir(cfg) -> Path:
    return Path(cfg.distill.cache_dir or Path(cfg.output.dir) / "teacher_cache")


def read_cache(directory: Path, expected: str) -> Optional[TopKCache]:
    """The cache in `directory` when its fingerprint is `expected`, else None."""
    meta_path, data_path = directory / CACHE_META, directory / CACHE_FILE
    if not (meta_path.is_file() and data_path.is_file()):
        return None
    if json.loads(meta_path.read_text()).get("fingerprint") != expected:
        log.info("teacher cache %s was made for other settings or data: rebuilding it", directory)
        return None
    tensors = load_file(str(data_path))
    return TopKCache(tensors["ids"], tensors["logps"], tensors["offsets"])


@torch.no_grad()
def build_cache(teacher, examples: list, dcfg, pad_id: int, batch_size: int) -> TopKCache:
    """Run the teacher over `examples` once and keep its top-k per response position."""
    ids, logps, counts = [], [], []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        live = LiveTeacher(teacher, batch, dcfg.temperature)
        n = int(live.states.targets.numel())
        for s in range(0, n, 256):
            chunk_ids, chunk_logps = teacher_topk(
                live.chunk(s, min(s + 256, n))[0], dcfg.cache_top_k
            )
            ids.append(chunk_ids)
            logps.append(chunk_logps.float())
        counts += live.states.mask.sum(1).tolist()
    offsets = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0)
    return TopKCache(torch.cat(ids), torch.cat(logps), offsets)


def write_cache(cache: TopKCache, directory: Path, stamp: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"ids": cache.ids, "logps": cache.logps, "offsets": cache.offsets}
    save_file(tensors, str(directory / CACHE_FILE))
    atomic_write_text(directory / CACHE_META, json.dumps({"fingerprint": stamp}))  # last: complete


def answers_file(cfg) -> Path:
    return Path(cfg.output.dir) / "teacher_answers.json"


def teacher_answers(teacher, tokenizer, examples: list, cfg) -> list[str]:
    """The teacher's greedy answers to the examples' prompts, read from output.dir when an earlier
    (interrupted) run of the same prompts wrote them."""
    from ..evaluation import generate

    prompts = [e.prompt_messages for e in examples]
    stamp = hashlib.sha256(json.dumps([cfg.distill.teacher, prompts]).encode()).hexdigest()
    path = answers_file(cfg)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == stamp:
            return saved["answers"]
    answers = generate(
        teacher, tokenizer, prompts, cfg.distill.max_new_tokens, batch_size=cfg.eval.batch_size
    )
    atomic_write_text(path, json.dumps({"fingerprint": stamp, "answers": answers}))
    return answers
