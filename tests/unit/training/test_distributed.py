"""Data-parallel training in real torchrun processes (gloo over loopback) against one process.

Each torchrun run starts two ranks that train a tiny random Llama (dist_worker.py); the
one-process references run here, in the test process, through the same code.
"""

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import tiny_llama, tiny_tokenizer
from tests.unit.training import dist_worker
from tunesmith.errors import TrainingError
from tunesmith.training import checkpoint as ck
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


def test_a_meta_initialised_fsdp_model_loads_and_trains_as_a_normal_load(tmp_path):
    saved = tmp_path / "model"  # a safetensors directory, as the embedded model's cache copy
    tiny_llama(seed=3).save_pretrained(saved)
    tiny_tokenizer().save_pretrained(saved)
    run = ("--methods", "lora,full", "--load-dir", str(saved), "--dump-loaded")
    one_process(tmp_path / "one", *run, "--batch-size", "8")
    ok(torchrun(tmp_path / "two", *run, "--strategy", "fsdp")[0])
    for method in ("lora", "full"):
        one, two = tmp_path / "one" / method, tmp_path / "two" / method
        assert [(d / "built_on_meta").read_text() for d in (one, two)] == ["0", "1"]
        loaded = [load_file(str(d / "loaded.safetensors")) for d in (one, two)]
        assert max_diff(*loaded) <= 1e-6, method  # parameters (LoRA's seeded init too), logits
        assert max_diff(weights(tmp_path / "one", method), weights(tmp_path / "two", method)) <= (
            TOLERANCE
        ), method


def evaluations(out: Path) -> list[dict]:
    """The evaluations rank 0 logged (metrics.jsonl): at steps 2 and 3."""
    lines = (out / "lora" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"eval_loss"' in line]


def rank_evaluations(out: Path, rank: int) -> list[dict]:
    """What rank `rank` computed at steps 2 and 3 and after training."""
    lines = (out / "lora" / f"eval-rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_share_the_held_out_split_and_get_the_one_process_numbers(tmp_path, strategy):
    # 7 held-out examples: the LM loss in batches of 3 splits 2 batches (6 examples) to 1 (1),
    # the classification 4 examples to 3
    run = ("--steps", "3", "--eval-examples", "7")
    one_process(tmp_path / "one", *run, "--batch-size", "8")
    ok(torchrun(tmp_path / "two", *run, "--strategy", strategy)[0])
    keys = ("eval_loss", "eval_class_loss", "eval_accuracy")
    alone, shared = evaluations(tmp_path / "one"), evaluations(tmp_path / "two")
    assert [r["step"] for r in shared] == [r["step"] for r in alone] == [2, 3]
    for a, b in zip(alone, shared):
        assert {k: b[k] for k in keys} == pytest.approx({k: a[k] for k in keys}, rel=1e-6)
    whole = rank_evaluations(tmp_path / "one", 0)
    by_rank = [rank_evaluations(tmp_path / "two", r) for r in (0, 1)]
    for r, records in enumerate(by_rank):
        assert len(records) == len(whole) == 3
        for a, b in zip(whole, records):
            assert {k: b[k] for k in keys} == pytest.approx({k: a[k] for k in keys}, rel=1e-6), r
    # each rank's forwards saw its share only: 7 + 7 rows in one process, 6 + 4 and 1 + 3 here
    assert {rec["rows"] for rec in whole} == {14}
    assert [{rec["rows"] for rec in records} for records in by_rank] == [{10}, {4}]


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


def shard_file(rank: int) -> str:
    """Rank `rank`'s file in a checkpoint directory (DCP numbers them from 1)."""
    return f"shards/shard-{rank + 1:05d}-model-00001-of-00001.safetensors"


def sharded_without_pickles(path: Path, ranks: int) -> None:
    """Assert that the checkpoint at `path` holds each rank's shards, in JSON and safetensors files
    that hold nothing else (a pickle would be a file of its own, or bytes the header does not
    account for)."""
    files = sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file())
    names = [shard_file(rank) for rank in range(ranks)]
    assert files == sorted([ck.STATE, ck.TENSORS, *names])  # no trainable.safetensors
    state = json.loads((path / ck.STATE).read_text())
    largest = max(state["shards"]["tensors"].items(), key=lambda kv: math.prod(kv[1]["shape"]))
    rows = largest[1]["shape"][0]
    for rank, name in enumerate(names):
        header = safetensors_header(path / name)
        sharding = json.loads(header["__metadata__"]["DCP_SHARDING_INFO"])
        # this rank's rows of the largest tensor only (FSDP shards dim 0)
        assert header[largest[0]]["shape"][0] == rows // ranks
        assert sharding[largest[0]]["saved_offsets"][0] == rank * rows // ranks


def safetensors_header(file: Path) -> dict:
    """The JSON header of a safetensors file, once checked to describe every byte after it."""
    data = file.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    assert 8 + size + max(ends) == len(data), file
    return header


def test_fsdp_checkpoints_are_sharded_and_resume_on_two_processes_and_on_one(tmp_path):
    run, fsdp = ("--methods", "full", "--steps", "6", "--save-every", "2"), ("--strategy", "fsdp")
    ok(torchrun(tmp_path / "whole", *run, *fsdp)[0])
    kill = ("--fail-rank", "0", "--fail-step", "5", "--fail-how", "die")
    assert torchrun(tmp_path / "cut", *run, *fsdp, *kill)[0].returncode != 0
    checkpoints = tmp_path / "cut" / "full" / "checkpoints"
    sharded_without_pickles(checkpoints / "last", ranks=2)
    sharded_without_pickles(checkpoints / "previous", ranks=2)
    for copy in ("cut_one", "cut_damaged"):
        shutil.copytree(tmp_path / "cut", tmp_path / copy)
    ok(torchrun(tmp_path / "cut", *run, *fsdp)[0])
    assert resumed_from(tmp_path / "cut", "full") == 4
    whole, resumed = weights(tmp_path / "whole", "full"), weights(tmp_path / "cut", "full")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # One process at batch 8 takes the same global batches on from the 2 x 4 checkpoint at step 4.
    one_process(tmp_path / "one", *run, "--batch-size", "8")
    reference = weights(tmp_path / "one", "full")
    one_process(tmp_path / "cut_one", *run, "--batch-size", "8")
    assert resumed_from(tmp_path / "cut_one", "full") == 4
    assert max_diff(reference, weights(tmp_path / "cut_one", "full")) <= TOLERANCE
    # A lost shard file makes last/ unusable; the resume falls back to previous/ (step 2).
    (tmp_path / "cut_damaged" / "full" / "checkpoints" / "last" / shard_file(1)).unlink()
    one_process(tmp_path / "cut_damaged", *run, "--batch-size", "8")
    assert resumed_from(tmp_path / "cut_damaged", "full") == 2
    assert max_diff(reference, weights(tmp_path / "cut_damaged", "full")) <= TOLERANCE


def test_a_one_process_checkpoint_resumes_on_two_fsdp_ranks(tmp_path):
    run = ("--methods", "full", "--steps", "6", "--save-every", "2")
    one_process(tmp_path / "one", *run, "--batch-size", "8")
    with pytest.raises(TrainingError, match="injected failure at step 5"):
        one_process(
            tmp_path / "cut", *run, "--batch-size", "8", "--fail-rank", "0", "--fail-step", "5"
        )
    assert (tmp_path / "cut" / "full" / "checkpoints" / "last" / ck.WEIGHTS).is_file()  # whole
    # Two ranks at batch 4 take the same global batches on; each keeps its part of the tensors.
    ok(torchrun(tmp_path / "cut", *run, "--strategy", "fsdp")[0])
    assert resumed_from(tmp_path / "cut", "full") == 4
    resumed = weights(tmp_path / "cut", "full")
    assert max_diff(weights(tmp_path / "one", "full"), resumed) <= TOLERANCE
