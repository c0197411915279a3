"""Matrix cases for (IA)^3: one vector per target, sized by the out_features of a key/value
layer or the in_features of a feedforward (down-projection) layer."""

from tests.unit.methods.matrix_support import Case, linear_shapes
from tunesmith.methods.ia3 import Ia3Config


def ia3_params(model, targets, feedforward):
    # Output-scaled targets get l: (out, 1); feedforward targets get l: (1, in).
    scaled = sum(o for _, o in linear_shapes(model, targets))
    return scaled + sum(i for i, _ in linear_shapes(model, feedforward))


CASES = [
    # Architecture defaults: llama k_proj, v_proj (+ down_proj on its input).
    Case("ia3", "llama", Ia3Config(), lambda m: ia3_params(m, ["k_proj", "v_proj"], ["down_proj"])),
    # GPT-2 defaults: the fused c_attn (q, k and v all rescaled) and mlp.c_proj on its input.
    Case("ia3", "gpt2", Ia3Config(), lambda m: ia3_params(m, ["c_attn"], ["mlp.c_proj"])),
    Case(
        "ia3-explicit",
        "llama",
        Ia3Config(
            target_modules=["v_proj", "up_proj", "down_proj"], feedforward_modules=["down_proj"]
        ),
        lambda m: ia3_params(m, ["v_proj", "up_proj"], ["down_proj"]),
    ),
]
