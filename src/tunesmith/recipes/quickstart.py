"""The quick-start: zero-shot vs LoRA-fine-tuned exact match on the built-in extraction task."""

import json
import logging
from pathlib import Path
from typing import Sequence

from ..data import load_splits
from ..data.synthetic import extraction_records
from ..models.frozen_weights import weights_for_evaluation
from ..models.loading import load_configured_model
from ..tasks import load_config
from ..utils.files import atomic_write_text
from . import sft
from .common import generation_scores

log = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).with_name("quickstart.yaml")
SIZES = {"train": (400, 1), "eval": (50, 2), "test": (100, 3)}  # records, seed


def write_task_data(data_dir: Path) -> dict[str, str]:
    """Generate the task's train/eval/test JSONL files; returns their paths."""
    paths = {}
    for split, (n, seed) in SIZES.items():
        path = data_dir / f"{split}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in extraction_records(n, seed)))
        paths[split] = str(path)
    return paths


def run(config_path=None, overrides: Sequence[str] = (), progress: bool = True) -> dict:
    """Generate data, score the base model, fine-tune with LoRA, score again.

    Returns {"zero_shot": metrics, "fine_tuned": metrics, "samples": [...], "output_dir": ...}.
    """
    cfg = load_config(str(config_path or DEFAULT_CONFIG), overrides)
    out = Path(cfg.output.dir)
    paths = write_task_data(out / "data")
    cfg.data.train, cfg.data.eval, cfg.data.test = paths["train"], paths["eval"], paths["test"]
    model, tokenizer = load_configured_model(cfg.model)
    weights_for_evaluation(model, cfg.model.dtype, cfg.train.precision)  # as fine-tuning stores it
    test = load_splits(cfg.data, tokenizer, cfg.train.seed).test
    log.info(
        "scoring the base model zero-shot on %d held-out examples",
        min(len(test), cfg.eval.limit or len(test)),
    )
    zero_shot, before = generation_scores(model, tokenizer, test, cfg)
    del model
    fine_tuned = sft.run(cfg, progress=progress)
    after = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    samples = [{**a, "zero_shot": b["prediction"]} for a, b in zip(after, before)]
    return {
        "zero_shot": zero_shot,
        "fine_tuned": fine_tuned,
        "samples": samples,
        "output_dir": str(out),
    }
