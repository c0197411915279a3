"""Data-parallel training in real torchrun processes (gloo over loopback) against one process.

Each torchrun run starts two ranks that train a tiny random Llama (dist_worker.py); the
one-process references run here, in the test process, through the same code.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import tiny_llama
from tests.unit.training import dist_worker
from tunesmith.training.checkpoint import read_position

WORKER = Path(dist_worker.__file__)
ROOT = WORKER.parents[3]
TOLERANCE = 1e-5  # fp32, the bound for "equal"


def torchrun(out: Path, *args: str, nproc: int = 2, limit: float = 180):
    """Run dist_worker.py on `nproc` ranks; (CompletedProcess, seconds)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--max-restarts", "0"]
    cmd += ["--nproc-per-node", str(nproc), str(WORKER), "--out", str(out), *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
    return done, time.perf_counter() - start


def one_process(out: Path, *args: str) -> None:
    dist_worker.run(dist_worker.parse(["--out", str(out), *args]))


def weights(out: Path, method: str) -> dict:
    return load_file(str(out / method / "weights.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def losses(out: Path, method: str) -> list[float]:
    import json

    lines = (out / method / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


def resumed_from(out: Path, method: str = "lora") -> int:
    return int((out / method / "resumed_from").read_text())


def ok(done) -> None:
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_of_batch_4_equal_one_process_of_batch_8(tmp_path, strategy):
    methods = "lora,full"
    one_process(tmp_path / "one", "--methods", methods, "--batch-size", "8")
    done, _ = torchrun(tmp_path / "two", "--methods", methods, "--strategy", strategy)
    ok(done)
    initial = dict(tiny_llama(seed=3).named_parameters())
    for method in methods.split(","):
        one, two = weights(tmp_path / "one", method), weights(tmp_path / "two", method)
        assert max_diff(one, two) <= TOLERANCE, method
        # ... and training moved the weights far more than that (B of LoRA starts at zero)
        moved = max_diff(one, {k: initial.get(k, torch.zeros_like(v)) for k, v in one.items()})
        assert moved > 100 * TOLERANCE, method
        # losses summed over both ranks, logged once (by rank 0): 5 steps, each as one process
        assert losses(tmp_path / "two", method) == pytest.approx(
            losses(tmp_path / "one", method), abs=TOLERANCE
        )


def test_resume_after_a_killed_rank_is_bit_identical(tmp_path):
    # With dropout: each rank draws its own masks, so each rank's RNG state must come back.
    run = ("--steps", "6", "--save-every", "2", "--dropout", "0.2")
    ok(torchrun(tmp_path / "whole", *run)[0])
    kill = ("--fail-rank", "1", "--fail-step", "5", "--fail-how", "die")
    assert torchrun(tmp_path / "cut", *run, *kill)[0].returncode != 0
    assert read_position(tmp_path / "cut" / "lora" / "checkpoints" / "last")["step"] == 4
    ok(torchrun(tmp_path / "cut", *run)[0])
    assert resumed_from(tmp_path / "cut") == 4
    whole, resumed = weights(tmp_path / "whole", "lora"), weights(tmp_path / "cut", "lora")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_rank_that_fails_stops_the_run_with_its_error(tmp_path):
    done, seconds = torchrun(tmp_path, "--fail-rank", "1", "--fail-step", "2", "--timeout", "120")
    assert done.returncode != 0
    assert "injected failure at step 2" in done.stderr
    assert seconds < 60  # torchrun stopped rank 0; it did not sit out its 120 s timeout


def test_a_stalled_rank_makes_the_others_stop_after_the_timeout(tmp_path):
    stall = ("--fail-rank", "1", "--fail-step", "2", "--fail-how", "stall", "--timeout", "5")
    done, seconds = torchrun(tmp_path, *stall)
    assert done.returncode != 0
    assert "rank 0: waiting for the other ranks failed" in done.stderr, done.stderr[-3000:]
    assert "train.distributed.timeout" in done.stderr
    assert seconds < 60  # not the stalled rank's 600 s


def test_fsdp_checkpoints_resume_on_two_processes_and_on_one(tmp_path):
    # One process at batch 8 takes the same global batches on from the 2 x 4 checkpoint at step 4.
    run = ("--methods", "full", "--steps", "6", "--save-every", "2")
    one_process(tmp_path / "one", *run, "--batch-size", "8")
    reference = weights(tmp_path / "one", "full")
    kill = ("--fail-rank", "0", "--fail-step", "5", "--fail-how", "die")
    assert torchrun(tmp_path / "cut", *run, "--strategy", "fsdp", *kill)[0].returncode != 0
    shutil.copytree(tmp_path / "cut", tmp_path / "cut_one")
    ok(torchrun(tmp_path / "cut", *run, "--strategy", "fsdp")[0])
    assert resumed_from(tmp_path / "cut", "full") == 4
    assert max_diff(reference, weights(tmp_path / "cut", "full")) <= TOLERANCE
    one_process(tmp_path / "cut_one", *run, "--batch-size", "8")
    assert resumed_from(tmp_path / "cut_one", "full") == 4
    assert max_diff(reference, weights(tmp_path / "cut_one", "full")) <= TOLERANCE
