"""Mixed-adapter batches give each row what its adapter alone gives."""

import pytest
import torch

from tests.tiny import tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.evaluation.decode import greedy_decode
from tunesmith.methods import apply_method, disabled_adapters, merge_adapters, set_active_adapter
from tunesmith.methods.lora import LoraConfig, mixed_adapters

NAMES = ["a", "b", "c"]


def _model():
    model = tiny_llama()
    # Different ranks and targets per adapter.
    for i, name in enumerate(NAMES):
        targets = (
            ["q_proj", "v_proj"]
            if name == "c"
            else ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
        )
        apply_method(
            model, LoraConfig(r=2 + 2 * i, alpha=8, target_modules=targets), adapter_name=name
        )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.3)
    return model.eval()


def _alone(model, name, ids):
    if name is None:
        with disabled_adapters(model):
            return model(input_ids=ids).logits
    set_active_adapter(model, name)
    return model(input_ids=ids).logits


def test_mixed_batch_equals_one_adapter_at_a_time():
    model = _model()
    rows = ["a", "b", None, "c", "a", "c"]
    ids = torch.randint(3, 120, (len(rows), 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), mixed_adapters(model, rows):
        mixed = model(input_ids=ids).logits
    for i, name in enumerate(rows):
        with torch.no_grad():
            ref = _alone(model, name, ids[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], ref, atol=1e-5, rtol=1e-5)


def test_mixed_greedy_decode_equals_per_adapter_decode():
    model = _model()
    rows = ["c", "a", "b", None]
    ids = torch.randint(3, 120, (len(rows), 8), generator=torch.Generator().manual_seed(3))
    with mixed_adapters(model, rows):
        mixed = greedy_decode(model, ids, max_new_tokens=12)
    for i, name in enumerate(rows):
        if name is None:
            with disabled_adapters(model):
                ref = greedy_decode(model, ids[i : i + 1], max_new_tokens=12)
        else:
            set_active_adapter(model, name)
            ref = greedy_decode(model, ids[i : i + 1], max_new_tokens=12)
        assert torch.equal(mixed[i : i + 1], ref)


def test_mixed_adapters_reject_bad_use():
    model = _model()
    with pytest.raises(ConfigError, match="no adapter named zz"):
        with mixed_adapters(model, ["a", "zz"]):
            pass
    with pytest.raises(ConfigError, match="one adapter name per batch row"):
        with torch.no_grad(), mixed_adapters(model, ["a", "b"]):
            model(input_ids=torch.ones((3, 4), dtype=torch.long))
    set_active_adapter(model, "a")
    merge_adapters(model)
    with pytest.raises(ConfigError, match="unmerged"):
        with mixed_adapters(model, ["a"]):
            pass
