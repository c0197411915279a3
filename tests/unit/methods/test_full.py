"""Full fine-tuning and the base-weight contract (train_base_parameters) it relies on."""

import json

import pytest
import torch

from tests.tiny import tiny_gpt2, tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.methods import apply_method, disabled_adapters, merge_and_unload
from tunesmith.methods.base_params import BASE_PARAMS_ATTR
from tunesmith.methods.bitfit import BitfitConfig
from tunesmith.methods.full import FullConfig
from tunesmith.methods.io import load_adapter, save_adapter

INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8]])


def _loss(model):
    return model(input_ids=INPUT, labels=INPUT).loss


def _step(model, lr=1e-2):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    _loss(model).backward()
    opt.step()
    opt.zero_grad()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def test_every_weight_is_saved_under_peft_names(tmp_path):
    model = apply_method(tiny_llama(), FullConfig())
    _step(model)
    save_adapter(model, tmp_path)
    assert (
        json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "TUNESMITH_FULL"
    )
    fresh = load_adapter(tiny_llama(), tmp_path)
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=0, rtol=0)
    with disabled_adapters(fresh):  # the loaded model still knows its base weights
        torch.testing.assert_close(_logits(fresh), _logits(tiny_llama()), atol=0, rtol=0)


def test_reference_pass_inside_disabled_adapters_keeps_backward_valid():
    # DPO's pattern: policy forward, reference forward with adapters disabled, then backward.
    model = apply_method(tiny_llama(), FullConfig())
    loss = _loss(model)
    with torch.no_grad(), disabled_adapters(model):
        reference = _logits(model)
    loss.backward()
    torch.testing.assert_close(reference, _logits(tiny_llama()), atol=0, rtol=0)
    assert model.lm_head.weight.grad is not None


def test_merge_and_unload_keeps_the_fine_tuned_weights():
    model = apply_method(tiny_gpt2(), FullConfig())
    _step(model)
    tuned = _logits(model)
    merge_and_unload(model)
    assert not hasattr(model, BASE_PARAMS_ATTR)
    torch.testing.assert_close(_logits(model), tuned, atol=0, rtol=0)


def test_two_adapters_cannot_train_the_same_base_weights():
    model = apply_method(tiny_gpt2(), FullConfig())
    with pytest.raises(ConfigError, match="already train"):
        apply_method(model, BitfitConfig(), adapter_name="biases")


def _train_full(tmp_path, objective):
    from tunesmith.config.schema import TrainConfig
    from tunesmith.data import Example
    from tunesmith.training import train

    model = apply_method(tiny_llama(), FullConfig())
    examples = [Example(list(INPUT[0]), list(INPUT[0])) for _ in range(4)]
    cfg = TrainConfig(max_steps=2, batch_size=2, lr=1e-2, log_every=1, resume=False)
    train(model, examples, cfg, tmp_path, objective)
    return model


def test_training_an_objective_without_the_starting_model_frees_its_copy(tmp_path):
    from tunesmith.training import sft_objective

    model = _train_full(tmp_path, sft_objective(pad_id=0))
    held = getattr(model, BASE_PARAMS_ATTR)["default"]
    assert held and all(original is None for _, original in held)
    tuned = _logits(model)
    with pytest.raises(ConfigError, match="released when training began"):
        with disabled_adapters(model):
            pass
    # the refusal left the model as it was: adapters active, the trained weights in place
    torch.testing.assert_close(_logits(model), tuned, atol=0, rtol=0)
    save_adapter(model, tmp_path / "adapter")
    fresh = load_adapter(tiny_llama(), tmp_path / "adapter")
    torch.testing.assert_close(_logits(fresh), tuned, atol=0, rtol=0)


def test_an_objective_that_runs_the_starting_model_keeps_it(tmp_path):
    import dataclasses

    from tunesmith.training import sft_objective

    objective = dataclasses.replace(sft_objective(pad_id=0), uses_starting_weights=True)
    model = _train_full(tmp_path, objective)
    with disabled_adapters(model):
        torch.testing.assert_close(_logits(model), _logits(tiny_llama()), atol=0, rtol=0)
