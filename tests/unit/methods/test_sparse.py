"""Sparse fine-tuning specifics: the schedule, sparsity reached, masked training, saved masks."""

import pytest
import torch

from tests.tiny import tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.methods import apply_method
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.methods.registry import method_reports, run_step_hooks
from tunesmith.methods.sparse import (
    SparseConfig,
    SparseDeltaLinear,
    kept_count,
    prune,
    reached_sparsity,
)

INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8]])
TARGETS = ["q_proj", "v_proj"]  # tiny llama: q 16 x 16 = 256 entries, v 16 x 8 = 128, two layers


def _train(model, steps, hooks=False):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, steps + 1):
        model(input_ids=INPUT, labels=INPUT).loss.backward()
        opt.step()
        opt.zero_grad()
        if hooks:
            run_step_hooks(model, step)


def _layers(model):
    return [m for m in model.modules() if isinstance(m, SparseDeltaLinear)]


def test_schedules():
    cubic = SparseConfig(sparsity=0.8, rounds=4, prune_every=10)
    assert [round(cubic.sparsity_after(k), 6) for k in (0, 2, 4, 9)] == [
        0,
        0.7,
        0.8,
        0.8,
    ]  # 0.8 * (1 - 0.5^3)
    linear = SparseConfig(sparsity=0.8, rounds=4, schedule="linear")
    assert linear.sparsity_after(2) == pytest.approx(0.4)
    assert [cubic.round_at(s) for s in (9, 10, 25, 1000)] == [0, 1, 2, 4]
    with pytest.raises(ConfigError, match="sparsity"):
        SparseConfig(sparsity=1.0)


def test_pruning_reaches_the_target_and_keeps_the_largest_updates():
    model = apply_method(tiny_llama(), SparseConfig(target_modules=TARGETS))
    _train(model, steps=2)
    before = {id(m): m.sparse_delta["default"].detach().abs().clone() for m in _layers(model)}
    assert reached_sparsity(model) == 0 and kept_count(model) == 2 * (256 + 128)
    prune(model, 0.75)
    assert reached_sparsity(model) == 0.75 and kept_count(model) == 2 * (64 + 32)
    for layer in _layers(model):
        mask, size = layer.mask("default"), before[id(layer)]
        assert size[mask].min() >= size[~mask].max()


def test_pruned_entries_stay_at_the_pretrained_value():
    base = tiny_llama()
    model = apply_method(tiny_llama(), SparseConfig(target_modules=TARGETS))
    _train(model, steps=1)
    prune(model, 0.5)
    _train(model, steps=2)
    for name, layer in model.named_modules():
        if isinstance(layer, SparseDeltaLinear):
            mask, delta = layer.mask("default"), layer.delta_weight("default")
            assert torch.all(delta[~mask] == 0) and torch.all(delta[mask] != 0)
            assert torch.equal(layer.base_layer.weight, base.get_submodule(name).weight)


def test_report_warns_when_training_ends_before_the_target(caplog):
    model = apply_method(
        tiny_llama(),
        SparseConfig(
            target_modules=TARGETS, sparsity=0.5, rounds=2, prune_every=1, schedule="linear"
        ),
    )
    _train(model, steps=1, hooks=True)
    assert method_reports(model)["sparsity"] == 0.25
    assert "reached sparsity 0.250 of the target 0.500" in caplog.text


def test_step_hooks_follow_the_schedule():
    model = apply_method(
        tiny_llama(),
        SparseConfig(
            target_modules=TARGETS, sparsity=0.5, rounds=2, prune_every=1, schedule="linear"
        ),
    )
    _train(model, steps=1, hooks=True)
    assert reached_sparsity(model) == 0.25
    _train(model, steps=3, hooks=True)  # steps 1-3 again: the schedule saturates at round 2
    assert reached_sparsity(model) == 0.5
    assert all(
        torch.all(m.sparse_delta["default"][~m.mask("default")] == 0) for m in _layers(model)
    )
    targeted = sum(m.base_layer.weight.numel() for m in _layers(model))
    assert method_reports(model) == {"sparsity": 0.5, "effective_trainable_params": targeted // 2}


def test_masks_are_saved_and_loaded(tmp_path):
    model = apply_method(tiny_llama(), SparseConfig(target_modules=TARGETS))
    _train(model, steps=1)
    prune(model, 0.9)
    save_adapter(model, tmp_path)
    fresh = load_adapter(tiny_llama(), tmp_path)
    assert kept_count(fresh) == kept_count(model)
    for a, b in zip(_layers(model), _layers(fresh)):
        assert torch.equal(a.mask("default"), b.mask("default"))
