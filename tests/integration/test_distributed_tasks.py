"""Every task type trains under `tunesmith train CONFIG --nproc 2` on a tiny model, with DDP and
with FSDP: 3 steps logged once, the task's outputs written. Slow (two processes per case, ~30 s
each): `pytest -m slow tests/integration/test_distributed_tasks.py`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tiny import save_tiny_model, tiny_llama

ROOT = Path(__file__).resolve().parents[2]
REWARD = (
    "def lower(prompts, completions, **fields):\n"
    "    return [sum(c.islower() for c in x) / max(len(x), 1) for x in completions]\n"
)


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _sections(task: str, d: Path) -> dict:
    sft = [{"instruction": f"Echo {i}", "output": f"echo {i}"} for i in range(40)]
    pairs = [
        {"prompt": f"say {i}", "chosen": "yes " * (1 + i % 3), "rejected": "NO"} for i in range(40)
    ]
    prompts = [{"prompt": f"say something {i}"} for i in range(40)]
    labelled = [
        {"text": f"item {i} {'good' if i % 2 else 'bad'}", "label": str(i % 2)} for i in range(40)
    ]
    on_policy = {"reward": {"function": "my_rewards:lower"}}
    return {
        "sft": {"data": {"train": _jsonl(d / "sft.jsonl", sft)}},
        "dpo": {"data": {"train": _jsonl(d / "pairs.jsonl", pairs)}},
        "kto": {"data": {"train": _jsonl(d / "pairs.jsonl", pairs)}},
        "reward": {"data": {"train": _jsonl(d / "pairs.jsonl", pairs)}},
        "classify": {"data": {"train": _jsonl(d / "cls.jsonl", labelled)}, "task": {"trainable": "method"}},
        "grpo": {"data": {"train": _jsonl(d / "p.jsonl", prompts)}, "grpo": {"num_generations": 2, "max_new_tokens": 4}, **on_policy},
        "ppo": {"data": {"train": _jsonl(d / "p.jsonl", prompts)}, "ppo": {"max_new_tokens": 4}, **on_policy},
    }[task]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("task", ["sft", "classify", "reward", "dpo", "kto", "ppo", "grpo"])
def test_every_task_trains_on_two_processes(tmp_path, task, strategy):
    model_dir = save_tiny_model(tmp_path / "tiny", tiny_llama(initializer_range=0.3))
    (tmp_path / "my_rewards.py").write_text(REWARD)
    cfg = {
        "model": {"name": str(model_dir)},
        "method": {"name": "lora", "r": 4, "target_modules": "all-linear"},
        "train": {
            "max_steps": 3,
            "batch_size": 2,
            "lr": 1e-2,
            "log_every": 1,
            "distributed": {"strategy": strategy, "threads": 1, "timeout": 60},
        },
        "eval": {"max_new_tokens": 4, "limit": 2},
        "output": {"dir": str(tmp_path / "out")},
    }
    sections = _sections(task, tmp_path)
    cfg["task"] = {"type": task, **sections.pop("task", {})}
    cfg.update(sections)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tunesmith", "train", "cfg.yaml", "--nproc", "2"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if '"loss"' in line] == [1, 2, 3]
    assert (tmp_path / "out" / "metrics.json").is_file()
