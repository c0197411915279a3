"""Matrix cases for AdaLoRA: per targeted (in, out) layer, init_r right singular vectors A
(r x in), left ones B (out x r) and singular values E (r x 1)."""

from tests.unit.methods.matrix_support import Case, linear_shapes
from tunesmith.methods.adalora import AdaloraConfig


def adalora_params(model, targets, r):
    return sum(r * (i + o + 1) for i, o in linear_shapes(model, targets))


CASES = [
    Case(
        "adalora",
        "llama",
        AdaloraConfig(init_r=4, target_r=2, target_modules=["q_proj", "v_proj", "down_proj"]),
        lambda m: adalora_params(m, ["q_proj", "v_proj", "down_proj"], 4),
    ),
    Case(
        "adalora",
        "gpt2",
        AdaloraConfig(init_r=3, target_r=2, target_modules=["c_attn", "c_proj"]),
        lambda m: adalora_params(m, ["c_attn", "c_proj"], 3),
    ),
    Case(
        "adalora",
        "bert",
        AdaloraConfig(init_r=4, target_r=2, target_modules=r".*\.(query|value|dense)"),
        lambda m: adalora_params(m, r".*\.(query|value|dense)", 4),
    ),
]
