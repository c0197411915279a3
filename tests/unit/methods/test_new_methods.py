"""LoHa, LoKr, VeRA, LN tuning and FourierFT specifics the matrix does not cover: config checks,
the update's formula on one layer, dropout in training only, refusing wrapped layers."""

import pytest
import torch
from torch import nn

from tests.tiny import tiny_llama
from tunesmith.config.loader import load_config
from tunesmith.errors import ConfigError, UnsupportedModuleError
from tunesmith.methods import (
    adapter_configs,
    apply_method,
    config_classes,
    merge_adapters,
    method_names,
    set_active_adapter,
    unmerge_adapters,
)
from tunesmith.methods.base import adapter_layers
from tunesmith.methods.fourierft import FourierFTConfig, FourierFTLinear
from tunesmith.methods.io import save_adapter
from tunesmith.methods.ln_tuning import LnTuningConfig, LnTuningLayer
from tunesmith.methods.loha import LohaConfig, LohaLinear
from tunesmith.methods.lokr import LokrConfig, LokrLinear
from tunesmith.methods.lora import LoraConfig
from tunesmith.methods.vera import VeraConfig, VeraLinear

NEW = ["loha", "lokr", "vera", "ln_tuning", "fourierft"]


@pytest.mark.parametrize("name", NEW)
def test_registered_and_unknown_keys_are_refused(name):
    assert name in method_names()
    with pytest.raises(ConfigError, match=r"unknown key .*(did you mean|allowed)"):
        load_config(None, [f"method.name={name}", "method.rr=4"], types=config_classes())


@pytest.mark.parametrize("cfg", [dict(r=0), dict(rank_dropout=1.0), dict(target_modules=[])])
def test_loha_config_checks(cfg):
    with pytest.raises(ConfigError):
        LohaConfig(**cfg)


def _layer(layer_cls, cfg, seed=0):
    torch.manual_seed(seed)
    layer = layer_cls(nn.Linear(8, 6))
    layer.add_adapter("default", cfg)
    with torch.no_grad():
        for p in layer.adapter_parameters("default").values():
            p.normal_()
    return layer.eval()


def test_loha_update_is_the_scaled_hadamard_product():
    layer = _layer(LohaLinear, LohaConfig(r=2, alpha=3))
    w1 = layer.hada_w1_a["default"] @ layer.hada_w1_b["default"]
    w2 = layer.hada_w2_a["default"] @ layer.hada_w2_b["default"]
    x = torch.randn(3, 8)
    expected = layer.base_layer(x) + x @ (w1 * w2 * 1.5).T  # alpha / r = 3 / 2
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize(
    "cfg",
    [dict(r=0), dict(decompose_factor=0), dict(init_weights="zeros"), dict(module_dropout=-0.1)],
)
def test_lokr_config_checks(cfg):
    with pytest.raises(ConfigError):
        LokrConfig(**cfg)


def test_lokr_update_is_the_scaled_kronecker_product():
    # 6 = 2 * 3 rows and 8 = 2 * 4 columns: W1 (2, 2), W2 (3, 4), full at r = 2.
    layer = _layer(LokrLinear, LokrConfig(r=2, alpha=1))
    w1, w2 = layer.lokr_w1["default"], layer.lokr_w2["default"]
    assert w1.shape == (2, 2) and w2.shape == (3, 4)
    blocks = [[w1[i, j] * w2 for j in range(2)] for i in range(2)]
    delta = torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0) * 0.5  # alpha / r
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ delta.T)


@pytest.mark.parametrize(
    "layer_cls,cfg",
    [
        (LohaLinear, LohaConfig(r=2, rank_dropout=0.5, module_dropout=0.3)),
        (LokrLinear, LokrConfig(r=2, rank_dropout=0.5, rank_dropout_scale=True)),
    ],
)
def test_dropout_acts_in_training_only(layer_cls, cfg):
    layer = _layer(layer_cls, cfg)
    x = torch.randn(3, 8)
    evaluated = layer(x)
    torch.testing.assert_close(layer(x), evaluated)  # eval: deterministic, nothing dropped
    layer.train()
    torch.manual_seed(0)
    trained = [layer(x) for _ in range(8)]
    assert any(not torch.allclose(t, evaluated) for t in trained)


def test_a_layer_wrapped_by_another_method_is_refused():
    model = apply_method(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="already holds a LoraLinear"):
        apply_method(model, LohaConfig(target_modules=["q_proj"]), "second")


def test_vera_layers_share_one_projection_and_slice_it():
    model = apply_method(tiny_llama(), VeraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    layers = [m for m in model.modules() if isinstance(m, VeraLinear)]
    assert len({id(layer.projection) for layer in layers}) == 1
    a = layers[0].projection.vera_A["default"]  # (r, largest in): down_proj's 32
    assert a.shape == (4, 32)
    q = layers[0]  # q_proj: 16 -> 16 uses the first 16 columns of A and rows of B
    with torch.no_grad():
        q.vera_lambda_b["default"].normal_()
    b = q.projection.vera_B["default"][:16]
    expected = (q.vera_lambda_b["default"][:, None] * b) @ (
        q.vera_lambda_d["default"][:, None] * a[:, :16]
    )
    torch.testing.assert_close(q.delta_weight("default"), expected)
    x = torch.randn(2, 16)
    torch.testing.assert_close(q(x), q.base_layer(x) + x @ expected.T)


@pytest.mark.parametrize("save", [True, False])
def test_vera_file_holds_the_projection_only_with_save_projection(save, tmp_path):
    from safetensors.torch import load_file

    model = apply_method(tiny_llama(), VeraConfig(r=4, save_projection=save))
    save_adapter(model, tmp_path)
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert ({"base_model.vera_A", "base_model.vera_B"} <= keys) == save
    assert len([k for k in keys if "vera_lambda" in k]) == 8  # 2 layers x (q, v) x (b, d)


def test_ln_tuning_default_targets_every_norm_and_is_recorded():
    model = apply_method(tiny_llama(), LnTuningConfig())
    assert adapter_configs(model)["default"].target_modules == [
        "input_layernorm",
        "norm",
        "post_attention_layernorm",
    ]
    assert sum(isinstance(m, LnTuningLayer) for m in model.modules()) == 5


def test_ln_tuning_refuses_a_layer_that_is_no_norm():
    with pytest.raises(UnsupportedModuleError, match="q_proj.*not a normalisation layer"):
        apply_method(tiny_llama(), LnTuningConfig(target_modules=["q_proj"]))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor([[5, 9, 13, 40, 41]])).logits


def test_ln_tuning_adapters_switch_and_merge_exactly():
    model = apply_method(tiny_llama(), LnTuningConfig(target_modules=["norm"]))
    apply_method(model, LnTuningConfig(target_modules=["norm"]), "other")
    norm = model.model.norm
    with torch.no_grad():
        norm.ln_tuning_layers["other"].weight.mul_(3.0)
    original = norm.base_layer.weight.clone()
    other = _logits(model)
    set_active_adapter(model, "default")
    assert not torch.allclose(_logits(model), other)  # "default" is still the base norm
    set_active_adapter(model, "other")
    merge_adapters(model)
    torch.testing.assert_close(norm.base_layer.weight, original * 3.0)
    torch.testing.assert_close(_logits(model), other)
    unmerge_adapters(model)
    assert torch.equal(norm.base_layer.weight, original)


def test_fourierft_update_is_the_scaled_inverse_dft_of_the_sparse_spectrum():
    layer = _layer(FourierFTLinear, FourierFTConfig(n_frequency=5, scaling=20.0))
    rows, cols = layer.indices["default"]
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) == 5  # distinct entries
    dense = torch.zeros(6, 8, dtype=torch.complex64)
    dense[rows, cols] = layer.fourierft_spectrum["default"].detach().to(torch.complex64)
    j, k = torch.arange(6)[:, None], torch.arange(8)[None, :]
    delta = torch.zeros(6, 8)
    for u, v in zip(rows.tolist(), cols.tolist()):  # the IDFT written out, 1 / (6 * 8) normalised
        phase = 2 * torch.pi * (u * j / 6 + v * k / 8)
        delta += (dense[u, v] * torch.exp(1j * phase)).real / 48
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ (20.0 * delta).T)


def test_fourierft_refuses_more_frequencies_than_weights_before_changing_the_model():
    model = tiny_llama()
    with pytest.raises(
        ConfigError, match="n_frequency=200 exceeds the 8 x 16 = 128 weights of .*v_proj"
    ):
        apply_method(model, FourierFTConfig(n_frequency=200, target_modules=["q_proj", "v_proj"]))
    assert not list(adapter_layers(model))
