"""Frozen weights in bf16, trainable ones in fp32, forward passes under bf16 autocast."""

import pytest
import torch

from tests.tiny import tiny_llama
from tunesmith.methods import apply_method
from tunesmith.methods.lora import LoraConfig
from tunesmith.models.frozen_weights import store_frozen_weights, weights_for_training

IDS = torch.tensor([[5, 9, 23, 41, 7, 3], [11, 4, 8, 60, 2, 0]])


def _lora_llama():
    model = tiny_llama()
    apply_method(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():  # B != 0, so the adapter contributes
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(3))
    return model


def _loss_and_grads(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad
    }


def test_frozen_weights_go_to_bf16_and_trainable_ones_stay_fp32():
    model = _lora_llama()
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert store_frozen_weights(model) == frozen
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # buffers are left alone


def test_under_autocast_loss_and_gradients_match_fp32_weights_to_bf16_rounding():
    reference, stored = _lora_llama(), _lora_llama()
    store_frozen_weights(stored)
    loss_a, grads_a = _loss_and_grads(reference)
    loss_b, grads_b = _loss_and_grads(stored)
    assert abs(loss_a - loss_b) < 0.01 * loss_a
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert grads_b[name].dtype == torch.float32
        assert (grads_a[name] - grads_b[name]).norm() < 0.05 * grads_a[name].norm(), name


def test_outside_autocast_forward_passes_run_under_it_and_leave_it_off():
    reference, stored = _lora_llama(), _lora_llama()
    store_frozen_weights(stored)
    with torch.no_grad():
        a, b = reference(input_ids=IDS).logits, stored(input_ids=IDS).logits
    assert not torch.is_autocast_enabled("cpu")
    assert (a - b.float()).abs().max() < 0.05 * a.abs().max()
    with pytest.raises(IndexError):
        stored(input_ids=torch.tensor([[10**6]]))  # a failing pass leaves autocast off too
    assert not torch.is_autocast_enabled("cpu")


def test_a_trainable_bias_in_a_frozen_bf16_linear_still_runs_outside_autocast():
    model = tiny_llama()
    for name, p in model.named_parameters():
        p.requires_grad = name.endswith("norm.weight")
    store_frozen_weights(model)
    assert model.model.norm.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=IDS).logits).all()


def test_only_auto_under_bf16_changes_anything_and_full_fine_tuning_keeps_fp32():
    assert weights_for_training(_lora_llama(), "float32", "bf16") == 0
    assert weights_for_training(_lora_llama(), "auto", "fp32") == 0
    assert weights_for_training(_lora_llama(), "auto", "bf16") > 0
    full = tiny_llama()  # every parameter trainable: nothing is frozen, nothing is cast
    assert weights_for_training(full, "auto", "bf16") == 0
    assert {p.dtype for p in full.parameters()} == {torch.float32}
