"""AdaLoRA through the training loop: total_step from the run, the rank budget reaching target_r
by tfinal, the orthogonality penalty in the loss, and an exact resume (allocator EMAs and masks
saved with the checkpoint)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import tiny_llama, tiny_tokenizer
from tunesmith.config.schema import TrainConfig
from tunesmith.data import encode_records
from tunesmith.errors import ConfigError
from tunesmith.methods import adapter_configs, apply_method
from tunesmith.methods.adalora import AdaloraConfig, SvdLinear
from tunesmith.methods.adalora.allocator import orth_regularizer
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.training import sft_objective, train
from tunesmith.training.checkpoint import read_position

OBJ = sft_objective(pad_id=0)
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _examples(n=16):
    recs = [
        {"instruction": f"count {i}", "output": "x" * (1 + i % 5), "_source": f"t:{i}"}
        for i in range(n)
    ]
    return encode_records(recs, tiny_tokenizer(), "auto", 64)[0]


def _model(**kw):
    cfg = dict(init_r=4, target_r=2, tinit=1, tfinal=2, deltaT=1, target_modules=TARGETS)
    return apply_method(tiny_llama(), AdaloraConfig(**{**cfg, **kw}))


def _cfg(**kw):
    base = dict(max_steps=8, batch_size=4, grad_accum=1, lr=1e-2, log_every=1, save_every=3, seed=3)
    return TrainConfig(**{**base, **kw})


def _layers(model):
    return [m for m in model.modules() if isinstance(m, SvdLinear)]


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_loop_sets_total_step_and_masks_to_target_r_by_tfinal(tmp_path):
    model = _model()
    result = train(model, _examples(), _cfg(), tmp_path, OBJ)
    cfg = adapter_configs(model)["default"]
    assert cfg.total_step == 8
    layers = _layers(model)
    kept = [int(layer.keep["default"].sum()) for layer in layers]
    assert sum(kept) == 2 * len(layers)  # target_r on average, fixed from update 8 - 2 + 1 on
    for layer in layers:  # pruned singular values are zero after the last update
        assert torch.all(layer.lora_E["default"][~layer.keep["default"]] == 0)
    assert sorted(cfg.rank_pattern) == sorted(f"{p}.lora_E" for p in _paths(model))
    assert result.method_metrics == {"adalora_kept_ranks": 2 * len(layers), "adalora_layers": 6}


def _paths(model):
    return [n for n, m in model.named_modules() if isinstance(m, SvdLinear)]


def test_the_orthogonality_penalty_is_part_of_the_training_loss(tmp_path):
    model = _model(tinit=0, tfinal=0)  # a one-step run
    expected = orth_regularizer(model, "default", 0.5).item()
    assert expected > 0.1  # A A^T and B^T B are far from I at init (entries ~ N(0, 0.02))
    train(model, _examples(), _cfg(max_steps=1, precision="fp32"), tmp_path, OBJ)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["method_regularizer"] == pytest.approx(expected, rel=1e-5)
    no_reg = _model(tinit=0, tfinal=0, orth_reg_weight=0.0)
    train(no_reg, _examples(), _cfg(max_steps=1, precision="fp32"), tmp_path / "b", OBJ)
    record_b = json.loads((tmp_path / "b/metrics.jsonl").read_text().splitlines()[0])
    assert "method_regularizer" not in record_b
    assert record["loss"] == pytest.approx(record_b["loss"] + expected, rel=1e-5)


def test_resume_after_interrupt_allocates_exactly_as_an_uninterrupted_run(tmp_path):
    ex, cfg = _examples(), _cfg()
    torch.manual_seed(0)
    straight = _model()
    train(straight, ex, cfg, tmp_path / "a", OBJ)

    torch.manual_seed(0)
    first = _model()
    calls = {"n": 0}

    def die_in_step_5(module, args, output):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return output

    handle = first.model.norm.register_forward_hook(die_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(first, ex, cfg, tmp_path / "b", OBJ)
    handle.remove()
    assert read_position(tmp_path / "b/checkpoints/last")["step"] == 4
    saved = load_file(str(tmp_path / "b/checkpoints/last/state.safetensors"))
    ema = [k for k in saved if k.startswith("method.default/") and ".ipt.lora_E" in k]
    assert len(ema) == 6 and any(k.endswith(".keep") for k in saved)

    torch.manual_seed(99)  # a new process: other init, all restored from the checkpoint
    resumed = _model()
    train(resumed, ex, cfg, tmp_path / "b", OBJ)
    for name, value in _state(straight).items():
        torch.testing.assert_close(_state(resumed)[name], value, atol=0, rtol=0)
    for a, b in zip(_layers(straight), _layers(resumed)):
        assert torch.equal(a.keep["default"], b.keep["default"])
    pattern = adapter_configs(straight)["default"].rank_pattern
    assert adapter_configs(resumed)["default"].rank_pattern == pattern


def test_a_trained_adapter_saves_its_kept_ranks_and_loads_at_them(tmp_path):
    model = _model()
    train(model, _examples(), _cfg(), tmp_path / "run", OBJ)
    save_adapter(model, tmp_path / "a")
    saved = load_file(str(tmp_path / "a/adapter_model.safetensors"))
    e_rows = sum(v.shape[0] for k, v in saved.items() if k.endswith("lora_E"))
    assert e_rows == 2 * 6  # only the kept directions are written
    fresh = load_adapter(tiny_llama(), tmp_path / "a")
    x = torch.tensor([[5, 9, 13, 40, 41]])
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, model(x).logits, atol=1e-6, rtol=0)
    ranks = sorted(m.lora_A["default"].shape[0] for m in _layers(fresh))
    assert ranks == sorted(int(m.keep["default"].sum()) for m in _layers(model))


def test_a_schedule_without_budgeting_phase_is_refused_before_training(tmp_path):
    model = _model(tinit=5, tfinal=3)
    with pytest.raises(ConfigError, match="no budgeting phase.*tinit=5"):
        train(model, _examples(), _cfg(max_steps=8), tmp_path, OBJ)


def test_method_state_of_another_run_is_refused():
    from tunesmith.methods.registry import MethodStates

    model = _model()
    with pytest.raises(ConfigError, match="adapter 'other'.*another run"):
        MethodStates(model).load_state_dict({"other/x.keep": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="names no layer"):
        MethodStates(model).load_state_dict({"default/nowhere.keep": torch.ones(2)})
