"""LoRA specifics: PEFT's init, scaling, several named adapters (switch, disable), target errors."""

import math

import pytest
import torch

from tests.tiny import tiny_llama
from tunesmith.errors import ConfigError, UnsupportedModuleError
from tunesmith.methods import apply_method, disabled_adapters, merge_and_unload, set_active_adapter
from tunesmith.methods.lora import LoraConfig, LoraLinear

IDS = torch.tensor([[5, 9, 13, 40, 41, 42]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _randomise_b(model, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLinear) and name in m.adapter_names:
                m.lora_B[name].weight.copy_(
                    torch.randn(m.lora_B[name].weight.shape, generator=g) * 0.1
                )


def test_init_is_kaiming_a_and_zero_b_with_alpha_over_r_scaling():
    model = apply_method(tiny_llama(), LoraConfig(r=4, alpha=8, target_modules=["q_proj"]))
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoraLinear) and layer.scaling["default"] == 2.0
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    a = layer.lora_A["default"].weight
    assert a.abs().max() <= bound and a.std() > bound / 4
    rs = apply_method(
        tiny_llama(), LoraConfig(r=4, alpha=8, use_rslora=True, target_modules=["q_proj"])
    )
    assert rs.model.layers[0].self_attn.q_proj.scaling["default"] == 4.0  # alpha / sqrt(r)


def test_forward_adds_scaled_low_rank_update():
    model = apply_method(tiny_llama(), LoraConfig(r=2, alpha=6, target_modules=["v_proj"]))
    _randomise_b(model, "default", 0)
    layer = model.model.layers[1].self_attn.v_proj
    x = torch.randn(3, layer.in_features)
    w = (
        layer.base_layer.weight
        + 3.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    torch.testing.assert_close(layer(x), x @ w.T)


def test_under_bf16_autocast_the_update_and_gradients_match_the_fp32_adapter_path():
    # The forward skips the input's cast to the fp32 adapter under autocast and scales the r-wide
    # intermediate: the same bf16 matmuls as casting first and scaling the output.
    model = apply_method(tiny_llama(), LoraConfig(r=3, alpha=1, target_modules=["v_proj"]))
    _randomise_b(model, "default", 2)
    layer = model.model.layers[0].self_attn.v_proj
    layer.base_layer.weight.data = layer.base_layer.weight.data.bfloat16()  # frozen base in bf16
    a, b, s = layer.lora_A["default"], layer.lora_B["default"], layer.scaling["default"]
    x = torch.randn(5, layer.in_features).bfloat16().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        ref = layer.base_layer(x_ref) + (b(a(x_ref.float())) * s).to(torch.bfloat16)
    grads = torch.autograd.grad(out.float().square().sum(), [x, a.weight, b.weight])
    refs = torch.autograd.grad(ref.float().square().sum(), [x_ref, a.weight, b.weight])
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)  # bf16: one rounding step
    for got, want in zip(grads, refs):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def test_two_named_adapters_switch_and_disable():
    base = tiny_llama()
    model = apply_method(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), "a")
    _randomise_b(model, "a", 1)
    only_a = _logits(model)
    apply_method(model, LoraConfig(r=4, target_modules=["v_proj"]), "b")
    _randomise_b(model, "b", 2)
    only_b = _logits(model)
    assert not torch.allclose(only_a, only_b)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".b." in n for n in trainable)  # only the newest adapter trains
    set_active_adapter(model, "a")
    torch.testing.assert_close(_logits(model), only_a)
    with disabled_adapters(model):
        torch.testing.assert_close(_logits(model), _logits(base))
    with pytest.raises(ConfigError, match="no adapter named 'c'"):
        set_active_adapter(model, "c")


def test_merge_and_unload_leaves_plain_linears_with_same_output():
    model = apply_method(tiny_llama(), LoraConfig(r=2, target_modules="all-linear"))
    _randomise_b(model, "default", 3)
    before = _logits(model)
    merge_and_unload(model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    torch.testing.assert_close(_logits(model), before, atol=1e-5, rtol=1e-5)


def test_targets_that_match_nothing_list_the_linear_layers():
    with pytest.raises(
        UnsupportedModuleError, match="its linear layers are named: .*q_proj.*v_proj"
    ):
        apply_method(tiny_llama(), LoraConfig(target_modules=["query"]))
    with pytest.raises(UnsupportedModuleError):
        apply_method(tiny_llama(), LoraConfig(target_modules=r"nothing\..*"))


def test_all_linear_on_a_second_adapter_wraps_only_the_models_layers():
    model = apply_method(
        tiny_llama(), LoraConfig(r=2, target_modules="all-linear"), adapter_name="a"
    )
    wrapped_once = {n for n, m in model.named_modules() if isinstance(m, LoraLinear)}
    apply_method(model, LoraConfig(r=4, target_modules="all-linear"), adapter_name="b")
    wrapped_twice = {n for n, m in model.named_modules() if isinstance(m, LoraLinear)}
    assert wrapped_twice == wrapped_once
    assert all(
        set(m.adapter_names) == {"a", "b"} for m in model.modules() if isinstance(m, LoraLinear)
    )


def test_layers_to_transform_keeps_the_named_blocks_only():
    model = tiny_llama()
    cfg = LoraConfig(target_modules="all-linear", layers_to_transform=[-1])
    apply_method(model, cfg)
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoraLinear)}
    assert wrapped and all(n.startswith("model.layers.1.") for n in wrapped)
    assert len(wrapped) == 7  # q, k, v, o, gate, up, down of the last block
    assert cfg.layers_to_transform == [1]  # saved in PEFT's terms


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layers_to_transform=[5]), "out of range for a model of 2 blocks"),
        (dict(layers_to_transform=["last"]), "a block index or a list of them"),
        (dict(target_modules=r".*q_proj", layers_to_transform=[0]), "put the block indices"),
        (dict(layers_to_transform=[0], layers_pattern="blocks"), "keeps none"),
    ],
)
def test_layers_to_transform_bad_values_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        apply_method(tiny_llama(), LoraConfig(**kwargs))
