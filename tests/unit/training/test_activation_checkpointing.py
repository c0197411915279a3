"""train.activation_checkpointing: the same losses and gradients, recomputed instead of stored."""

import pytest
import torch
from torch import nn

from tests.tiny import tiny_llama
from tunesmith.errors import UnsupportedModuleError
from tunesmith.methods import apply_method
from tunesmith.methods.lora import LoraConfig
from tunesmith.models.heads import SequenceClassifier
from tunesmith.objectives.logps import sequence_logps
from tunesmith.utils.modules import enable_activation_checkpointing


def _grads(checkpointing: bool):
    model = tiny_llama()
    apply_method(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_()  # non-zero B, so every adapter gets a gradient
    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    ids = torch.randint(3, 100, (4, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    logps, _ = sequence_logps(model, ids, torch.ones_like(ids), labels)
    logps.sum().backward()
    return logps.detach(), [p.grad for p in model.parameters() if p.requires_grad]


def test_checkpointed_blocks_give_the_same_log_probs_and_gradients():
    plain, plain_grads = _grads(False)
    recomputed, grads = _grads(True)
    assert torch.equal(plain, recomputed)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, grads))
    assert all(g.abs().sum() > 0 for g in grads)


def test_it_reaches_the_language_model_inside_a_wrapper_and_refuses_other_modules():
    classifier = SequenceClassifier(tiny_llama(), 1, "last", bias=False)
    assert enable_activation_checkpointing(classifier) == 1
    assert all(layer.gradient_checkpointing for layer in classifier.lm.model.layers)
    with pytest.raises(UnsupportedModuleError, match="activation_checkpointing"):
        enable_activation_checkpointing(nn.Linear(2, 2))
