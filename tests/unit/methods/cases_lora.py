"""Matrix cases for LoRA: config overrides per architecture and the closed-form trainable count."""

from tests.unit.methods.matrix_support import Case, linear_shapes
from tunesmith.methods.lora import LoraConfig


def lora_params(model, targets, r):
    # Each targeted (in, out) layer gets A: r x in and B: out x r.
    return sum(r * (i + o) for i, o in linear_shapes(model, targets))


CASES = [
    Case(
        "lora",
        "llama",
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        lambda m: lora_params(m, ["q_proj", "v_proj"], 4),
    ),
    Case(
        "lora-all",
        "llama",
        LoraConfig(r=2, alpha=4, target_modules="all-linear"),
        lambda m: lora_params(m, "all-linear", 2),
    ),
    Case(
        "lora-rslora",
        "llama",
        LoraConfig(r=4, use_rslora=True, target_modules=r".*\.(k|o)_proj"),
        lambda m: lora_params(m, ["k_proj", "o_proj"], 4),
    ),
    Case(
        "lora",
        "gpt2",
        LoraConfig(r=4, target_modules=["c_attn", "c_fc"]),
        lambda m: lora_params(m, ["c_attn", "c_fc"], 4),
    ),
]


def dora_params(model, targets, r):
    # LoRA's A and B plus DoRA's magnitude m: one entry per output row.
    return lora_params(model, targets, r) + sum(o for _, o in linear_shapes(model, targets))


CASES += [
    Case(
        "dora",
        "llama",
        LoraConfig(r=4, use_dora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
        lambda m: dora_params(m, ["q_proj", "v_proj", "down_proj"], 4),
    ),
    Case(
        "dora-rslora",
        "gpt2",
        LoraConfig(r=4, use_dora=True, use_rslora=True, target_modules=["c_attn", "c_proj"]),
        lambda m: dora_params(m, ["c_attn", "c_proj"], 4),
    ),
    # PiSSA moves the top-r part of W0 into B @ A: equal to the base only up to float rounding.
    Case(
        "pissa",
        "llama",
        LoraConfig(r=4, init="pissa", target_modules=["q_proj", "o_proj", "up_proj"]),
        lambda m: lora_params(m, ["q_proj", "o_proj", "up_proj"], 4),
        atol=1e-5,
    ),
    Case(
        "pissa-dora",
        "gpt2",
        LoraConfig(r=2, init="pissa", use_dora=True, target_modules=["c_attn", "c_fc"]),
        lambda m: dora_params(m, ["c_attn", "c_fc"], 2),
        atol=1e-5,
    ),
    Case(
        "gaussian",
        "llama",
        LoraConfig(r=4, init="gaussian", target_modules="all-linear"),
        lambda m: lora_params(m, "all-linear", 4),
    ),
]
