"""Matrix cases for LoRA: config overrides per architecture and the closed-form trainable count."""
from tests.unit.methods.matrix_support import Case, linear_shapes

from tunesmith.methods.lora import LoraConfig


def lora_params(model, targets, r):
    # Each targeted (in, out) layer gets A: r x in and B: out x r.
    return sum(r * (i + o) for i, o in linear_shapes(model, targets))


CASES = [
    Case("lora", "llama", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
         lambda m: lora_params(m, ["q_proj", "v_proj"], 4)),
    Case("lora-all", "llama", LoraConfig(r=2, alpha=4, target_modules="all-linear"),
         lambda m: lora_params(m, "all-linear", 2)),
    Case("lora-rslora", "llama", LoraConfig(r=4, use_rslora=True, target_modules=r".*\.(k|o)_proj"),
         lambda m: lora_params(m, ["k_proj", "o_proj"], 4)),
    Case("lora", "gpt2", LoraConfig(r=4, target_modules=["c_attn", "c_fc"]),
         lambda m: lora_params(m, ["c_attn", "c_fc"], 4)),
]
