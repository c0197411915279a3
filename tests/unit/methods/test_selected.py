"""Selected-module specifics: which blocks and modules train, and the errors for bad selections."""

import pytest

from tests.tiny import tiny_gpt2, tiny_llama
from tunesmith.errors import ConfigError, UnsupportedModuleError
from tunesmith.methods import apply_method
from tunesmith.methods.selected import SelectedConfig, transformer_blocks
from tunesmith.utils.modules import count_parameters


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_top_k_layers_trains_the_last_blocks_only():
    model = apply_method(tiny_llama(), SelectedConfig(top_k_layers=1))
    assert _trainable(model) == {
        n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")
    }


def test_blocks_are_found_on_each_architecture():
    assert transformer_blocks(tiny_llama())[0] == "model.layers"
    assert transformer_blocks(tiny_gpt2())[0] == "transformer.h"


def test_modules_by_regex():
    cfg = SelectedConfig(top_k_layers=0, modules=[r"model\.layers\.0\.self_attn\.(q|k)_proj"])
    model = apply_method(tiny_llama(), cfg)
    h, kv = 16, 8  # tiny llama: hidden 16; k_proj out = 2 kv heads * head dim 4
    assert count_parameters(model)[0] == h * h + h * kv


def test_unmatched_module_lists_what_exists():
    with pytest.raises(UnsupportedModuleError) as e:
        apply_method(tiny_llama(), SelectedConfig(modules=["lm_haed"]))
    message = str(e.value)
    assert (
        "'lm_haed'" in message
        and "lm_head" in message
        and "model.layers.0-1" in message
        and "q_proj" in message
    )


def test_more_layers_than_the_model_has():
    with pytest.raises(ConfigError, match="only 2 blocks"):
        apply_method(tiny_gpt2(), SelectedConfig(top_k_layers=3))


def test_bad_regex_and_empty_selection_are_config_errors():
    with pytest.raises(ConfigError, match="valid regex"):
        apply_method(tiny_llama(), SelectedConfig(modules=["layers.["]))
    with pytest.raises(ConfigError, match="nothing would train"):
        SelectedConfig(top_k_layers=0, modules=[])
