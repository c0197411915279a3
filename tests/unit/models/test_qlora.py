"""QLoRA on tiny models: LoRA on a quantized base, merging into it, refusals, quantized directories."""

import pytest
import torch
from torch import nn

from tests.tiny import save_tiny_model, tiny_llama
from tunesmith.config.schema import ModelConfig
from tunesmith.errors import ConfigError
from tunesmith.methods import (
    apply_method,
    get_method,
    merge_adapters,
    merge_and_unload,
    method_names,
    unmerge_adapters,
)
from tunesmith.methods.bitfit import BitfitConfig
from tunesmith.methods.full import FullConfig
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.methods.lora import LoraConfig
from tunesmith.models import load_base_model
from tunesmith.models.quantization import (
    QuantizedLinear,
    dequantize_model,
    is_quantized_dir,
    quantize_model,
    requantization_error,
    save_pretrained_quantized,
)
from tunesmith.utils.modules import (
    count_parameters,
    is_linear_like,
    quantization_schemes,
    weight_bytes,
)

IDS = torch.tensor([[5, 17, 33, 9, 60, 2, 71]])


def _quantized(scheme="nf4"):
    model = tiny_llama()
    quantize_model(model, scheme)
    return model


def _randomize_lora(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_gradients_flow_into_lora_only(scheme):
    model = apply_method(_quantized(scheme), LoraConfig(r=4, target_modules="all-linear"))
    model.train()
    model(IDS, labels=IDS).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable and all("lora_" in n for n in trainable)
    assert with_grad == trainable
    assert all(
        p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n
    )  # B starts at 0
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(quantized) == 14 and all(not list(q.parameters()) for q in quantized)


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_output_equals_dequantized_base_plus_lora(scheme):
    qlora = apply_method(_quantized(scheme), LoraConfig(r=4, target_modules="all-linear"))
    _randomize_lora(qlora)
    reference = _quantized(scheme)
    dequantize_model(reference)  # the same rounded weights, as nn.Linear
    apply_method(reference, LoraConfig(r=4, target_modules="all-linear"))
    _randomize_lora(reference)
    torch.testing.assert_close(_logits(qlora), _logits(reference), atol=1e-5, rtol=1e-5)


def test_merge_requantizes_reports_error_and_unmerge_is_exact():
    model = apply_method(_quantized(), LoraConfig(r=4, target_modules=["q_proj", "up_proj"]))
    _randomize_lora(model)
    before = _logits(model)
    merge_adapters(model)
    err = requantization_error(model)
    assert err["layers"] == 4 and 0 < err["max_abs"] and 0 < err["relative"] < 0.2
    merged = _logits(model)
    assert not torch.equal(merged, before) and (merged - before).abs().max() < 1.0
    unmerge_adapters(model)
    torch.testing.assert_close(
        _logits(model), before, atol=0, rtol=0
    )  # the saved codes are put back


def test_merge_and_unload_gives_full_precision_layers_with_the_same_output():
    model = apply_method(_quantized(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    _randomize_lora(model)
    before = _logits(model)
    merge_and_unload(model)
    attn = model.model.layers[0].self_attn
    assert type(attn.q_proj) is nn.Linear and isinstance(attn.k_proj, QuantizedLinear)
    torch.testing.assert_close(_logits(model), before, atol=1e-5, rtol=1e-5)
    assert requantization_error(model)["layers"] == 0  # nothing was re-quantized


@pytest.mark.parametrize("cfg", [FullConfig(), BitfitConfig()], ids=["full", "bitfit"])
def test_methods_training_base_weights_are_refused_on_a_quantized_base(cfg):
    with pytest.raises(ConfigError, match="cannot train on a quantized base.*model.quantize=none"):
        apply_method(_quantized(), cfg)


def test_refusal_follows_the_registry_flag_also_when_loading(tmp_path):
    assert get_method("lora").supports_4bit
    assert not any(get_method(n).supports_4bit for n in ("full", "selected", "bitfit"))
    plain = apply_method(tiny_llama(), FullConfig())
    save_adapter(plain, tmp_path)
    with pytest.raises(ConfigError, match="cannot train on a quantized base"):
        load_adapter(_quantized(), tmp_path)
    assert "lora" in method_names()


@pytest.mark.parametrize(
    "kw, fragment", [({"use_dora": True}, "use_dora"), ({"init": "pissa"}, "pissa")]
)
def test_dora_and_pissa_are_refused_on_a_quantized_base(kw, fragment):
    model = _quantized()
    with pytest.raises(ConfigError, match=f"{fragment}.*not supported on a quantized base"):
        apply_method(model, LoraConfig(r=2, target_modules=["q_proj"], **kw))
    assert not any("lora" in n for n, _ in model.named_modules())  # nothing was wrapped


def test_quantized_layers_are_linear_like_and_counted():
    plain, model = tiny_llama(), _quantized()
    assert all(is_linear_like(m) for m in model.modules() if isinstance(m, QuantizedLinear))
    assert count_parameters(model)[1] == count_parameters(plain)[1]
    assert quantization_schemes(model) == {"nf4": 14} and quantization_schemes(plain) == {}
    assert weight_bytes(model) < 0.5 * weight_bytes(plain)


def test_config_validates_quantize():
    assert ModelConfig(quantize="nf4").quant_block_size == 64
    with pytest.raises(ConfigError, match="model.quantize must be none, nf4 or int8"):
        ModelConfig(quantize="fp4")
    with pytest.raises(ConfigError, match="quant_block_size must be an even number"):
        ModelConfig(quantize="nf4", quant_block_size=63)


def test_quantized_directory_loads_without_requantizing(tmp_path, monkeypatch):
    src = save_tiny_model(tmp_path / "tiny")
    model, tok = load_base_model(str(src), quantize="nf4")
    save_pretrained_quantized(model, tok, tmp_path / "q")
    assert is_quantized_dir(tmp_path / "q")

    def fail(*args, **kwargs):
        raise AssertionError("re-quantized")

    monkeypatch.setattr("tunesmith.models.quantization.linear.quantize_weight", fail)
    loaded, _ = load_base_model(str(tmp_path / "q"))
    assert quantization_schemes(loaded) == {"nf4": 14}
    torch.testing.assert_close(_logits(loaded), _logits(model), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="quantized to nf4; model.quantize=int8"):
        load_base_model(str(tmp_path / "q"), quantize="int8")
