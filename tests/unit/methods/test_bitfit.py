"""BitFit specifics: only biases train, and models without biases are refused."""

import json

import pytest

from tests.tiny import tiny_bert, tiny_gpt2, tiny_llama
from tunesmith.errors import UnsupportedModuleError
from tunesmith.methods import apply_method
from tunesmith.methods.bitfit import BitfitConfig
from tunesmith.methods.io import save_adapter


def test_llama_has_no_bias_to_train():
    with pytest.raises(UnsupportedModuleError, match="no bias parameter.*Llama"):
        apply_method(tiny_llama(), BitfitConfig())


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_bert])
def test_exactly_the_biases_train(build):
    model = apply_method(build(), BitfitConfig())
    for name, p in model.named_parameters():
        assert p.requires_grad == name.endswith(".bias"), name


def test_saves_biases_with_its_own_peft_type(tmp_path):
    model = apply_method(tiny_gpt2(), BitfitConfig())
    save_adapter(model, tmp_path)
    assert (
        json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"]
        == "TUNESMITH_BITFIT"
    )
