"""models.compat: the KV-cache keyword, `past_key_values` before transformers 5.24 and `cache` from it."""

import pytest
import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import DynamicCache

from tunesmith.methods.prefix_tuning import PrefixTuningConfig, apply_prefix_tuning
from tunesmith.models.compat import CACHE_NAMES, cache_kwarg, move_cache_kwarg


class _New(nn.Module):
    def forward(self, input_ids, cache=None, use_cache=None):
        return input_ids


class _Old(nn.Module):
    def forward(self, input_ids, past_key_values=None, use_cache=None):
        return input_ids


class _Neither(nn.Module):
    def forward(self, input_ids, **kwargs):
        return input_ids


def test_cache_kwarg_reads_the_forward_signature():
    assert cache_kwarg(_New()) == "cache"
    assert cache_kwarg(_Old()) == "past_key_values"
    assert cache_kwarg(_Neither()) == "past_key_values"


def test_cache_kwarg_of_the_installed_transformers(llama, gpt2):
    want = "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"
    for model in (llama, llama.base_model, gpt2, gpt2.base_model):
        assert cache_kwarg(model) == want


def test_move_cache_kwarg_renames_to_the_models_name_and_keeps_its_own():
    cases = [  # (module, kwargs before, kwargs after)
        (_New(), {"past_key_values": "c"}, {"cache": "c"}),
        (_Old(), {"cache": "c"}, {"past_key_values": "c"}),
        (_New(), {"cache": "own", "past_key_values": "other"}, {"cache": "own"}),
        (_New(), {"cache": None, "past_key_values": "other"}, {"cache": "other"}),
        (_Old(), {"input_ids": 1}, {"input_ids": 1}),
    ]
    for module, kwargs, after in cases:
        assert move_cache_kwarg(module, kwargs) == cache_kwarg(module)
        assert kwargs == after


@pytest.mark.parametrize("name", CACHE_NAMES)
def test_prefix_tuned_backbone_takes_a_cache_under_either_name(llama, name):
    model = apply_prefix_tuning(llama, PrefixTuningConfig(num_virtual_tokens=3)).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = model.base_model(input_ids=ids, use_cache=False).last_hidden_state  # (1, 4, H)
        cache = DynamicCache(config=model.config)
        got = model.base_model(input_ids=ids, use_cache=True, **{name: cache}).last_hidden_state
    torch.testing.assert_close(got, want)
    assert cache.get_seq_length() == 3 + 4  # the prefix and the tokens went into the cache given
