"""The pieces of multi-process training that need no second process: config keys, the torchrun
command, how global batches split and how a checkpoint's position maps to another world size."""

import argparse
from pathlib import Path

import pytest

from tests.tiny import tiny_llama, tiny_tokenizer
from tunesmith.cli.launch import launch, torchrun_command
from tunesmith.cli.main import build_parser
from tunesmith.config.schema import TrainConfig
from tunesmith.errors import ConfigError
from tunesmith.models.loading import load_base_model
from tunesmith.recipes.common import build_model
from tunesmith.tasks import load_config
from tunesmith.training.batches import micro_batches, total_steps
from tunesmith.training.distributed import global_slice, resolve_backend
from tunesmith.training.held_out import rank_share, share_bounds, summed_over_ranks
from tunesmith.training.loop import LoopPosition, _rebased
from tunesmith.training.objective import WeightedMeans


def test_train_distributed_keys_are_read_checked_and_listed_in_help():
    cfg = load_config(None, ["train.distributed.strategy=fsdp", "train.distributed.timeout=30"])
    assert (cfg.train.distributed.strategy, cfg.train.distributed.timeout) == ("fsdp", 30.0)
    with pytest.raises(ConfigError, match="did you mean 'train.distributed.strategy'"):
        load_config(None, ["train.distributed.stratgy=ddp"])
    with pytest.raises(ConfigError, match="train.distributed.backend must be one of"):
        load_config(None, ["train.distributed.backend=mpi"])
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for key in ("strategy", "backend", "timeout", "threads"):
        assert f"train.distributed.{key}" in help_text
    assert "--nproc" in help_text and "--rdzv-endpoint" in help_text


def _args(**kw):
    base = dict(
        nproc=2,
        nnodes=1,
        rdzv_endpoint=None,
        config="c.yaml",
        overrides=["train.lr=1e-3"],
        debug=False,
        progress=False,
    )
    return argparse.Namespace(**{**base, **kw})


def test_torchrun_command_for_one_machine_and_for_several():
    one = torchrun_command(_args())
    assert one[1:] == [
        "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
        "-m", "tunesmith", "train", "c.yaml", "train.lr=1e-3",
    ]  # fmt: skip
    two = torchrun_command(_args(nnodes=2, rdzv_endpoint="10.0.0.1:29400"))
    assert two[5:11] == [
        "--nnodes",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "10.0.0.1:29400",
    ]
    with pytest.raises(ConfigError, match="--rdzv-endpoint"):
        launch(_args(nnodes=2))


def test_two_ranks_split_the_global_batches_one_process_sees():
    cfg = TrainConfig(batch_size=4, seed=3)
    alone = micro_batches(20, TrainConfig(batch_size=8, seed=3), 0, 0)
    shared = micro_batches(20, cfg, 0, 0, world=2)
    for _ in range(6):  # two epochs of 20: batches of 8, 8, then the tail of 4
        (e1, i1, whole), (e2, i2, global_batch) = next(alone), next(shared)
        assert (e1, i1, whole) == (e2, i2, global_batch)
        halves = global_slice(global_batch, 0, 2) + global_slice(global_batch, 1, 2)
        assert halves == whole
    assert total_steps(20, cfg, world=2) == total_steps(20, TrainConfig(batch_size=8), world=1)


def test_a_tail_shorter_than_the_ranks_is_skipped_and_an_odd_one_cut():
    batches = micro_batches(9, TrainConfig(batch_size=4), 0, 0, world=2)
    sizes = [len(next(batches)[2]) for _ in range(2)]
    assert sizes == [8, 8]  # the 9th example alone cannot feed two ranks: epoch 1 starts
    odd = micro_batches(11, TrainConfig(batch_size=4), 0, 0, world=2)
    next(odd)
    tail = next(odd)[2]
    assert len(tail) == 3 and [len(global_slice(tail, r, 2)) for r in (0, 1)] == [1, 1]


@pytest.mark.parametrize("n", [0, 1, 6, 7, 13])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_held_out_shares_are_disjoint_complete_whole_batches(n, batch_size, world):
    shares = [share_bounds(n, batch_size, r, world) for r in range(world)]
    assert [i for share in shares for i in share] == list(range(n))  # disjoint, complete, in order
    assert all(share.start % batch_size == 0 for share in shares if share)  # whole batches
    batches = [-(-len(share) // batch_size) for share in shares]
    assert batches == sorted(batches, reverse=True) and batches[0] - batches[-1] <= 1


def test_held_out_shares_of_7_examples_on_2_ranks_are_uneven():
    assert [share_bounds(7, 1, r, 2) for r in (0, 1)] == [range(0, 4), range(4, 7)]
    assert [share_bounds(7, 3, r, 2) for r in (0, 1)] == [range(0, 6), range(6, 7)]
    assert [share_bounds(1, 3, r, 2) for r in (0, 1)] == [range(0, 1), range(1, 1)]


def test_one_process_evaluates_the_whole_held_out_split():
    examples, means = list(range(7)), WeightedMeans()
    means.add({"loss": 2.0}, 3)
    assert rank_share(examples, 3) is examples
    assert summed_over_ranks(means) is means


def test_a_checkpoint_resumes_at_the_same_example_with_another_world_size():
    saved = LoopPosition(step=4, epoch=1, batch=3, global_batch=8)  # 2 ranks x 4
    assert _rebased(saved, 8, Path("c")).batch == 3  # 1 process x 8
    assert _rebased(LoopPosition(batch=3, global_batch=8), 4, Path("c")).batch == 6
    with pytest.raises(ConfigError, match="not a multiple"):
        _rebased(LoopPosition(batch=3, global_batch=4), 8, Path("c"))
    assert _rebased(LoopPosition(batch=5), 4, Path("c")).batch == 5  # older checkpoints


def test_the_backend_follows_the_models_device():
    assert resolve_backend("auto", "cpu") == "gloo"
    assert resolve_backend("auto", "cuda") == "nccl"
    assert resolve_backend("gloo", "cpu") == "gloo"
    with pytest.raises(ConfigError, match="model is on cpu"):
        resolve_backend("nccl", "cpu")


@pytest.mark.parametrize("method, on_meta", [("lora", True), ("lora_dora", False), ("full", True)])
def test_fsdp_builds_the_base_on_meta_when_the_method_applies_there(
    tmp_path, monkeypatch, method, on_meta
):
    tiny_llama(seed=3).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; nothing here joins a group
    name, *variant = method.split("_")
    overrides = [f"model.name={tmp_path}", f"method.name={name}", "train.distributed.strategy=fsdp"]
    overrides += ["method.use_dora=true"] if variant else []
    model, _ = build_model(load_config(None, overrides), meta_init=True)
    base = model.get_input_embeddings().weight
    assert base.is_meta == on_meta
    own = [p for n, p in model.named_parameters() if "lora_" in n]  # LoRA's, made with values
    assert own == [] if name == "full" else own and not any(p.is_meta for p in own)
    normal, _ = load_base_model(str(tmp_path))
    assert type(model.model.layers[0].mlp) is type(normal.model.layers[0].mlp)  # fused alike
