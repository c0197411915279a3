"""Matrix cases for LoKr. Per targeted (in, out) layer, out = a * b and in = c * d as
`factorization` splits them; W1 (a, c) and W2 (b, d) are full matrices, or rank-r products
(r (a + c), r (b + d) parameters) when r is below half their larger side (W1: with decompose_both)."""

from tests.unit.methods.matrix_support import Case, linear_shapes
from tunesmith.methods.lokr import LokrConfig, factorization

BERT_TARGETS = r".*\.(query|key|value|dense)"  # not the MLM decoder (tied to the embeddings)


def lokr_params(model, targets, r, decompose_both=False, factor=-1):
    total = 0
    for i, o in linear_shapes(model, targets):
        (a, b), (c, d) = factorization(o, factor), factorization(i, factor)
        total += r * (a + c) if decompose_both and r < max(a, c) / 2 else a * c
        total += r * (b + d) if r < max(b, d) / 2 else b * d
    return total


CASES = [
    Case(
        "lokr",
        "llama",
        LokrConfig(r=1, alpha=2, target_modules=["q_proj", "v_proj", "down_proj"]),
        lambda m: lokr_params(m, ["q_proj", "v_proj", "down_proj"], 1),
    ),
    # decompose_factor 8 splits 16 as (8, 2): W1 (8, 8) is large enough to be decomposed at r = 1.
    Case(
        "lokr-both",
        "llama",
        LokrConfig(r=1, decompose_both=True, decompose_factor=8, target_modules="all-linear"),
        lambda m: lokr_params(m, "all-linear", 1, decompose_both=True, factor=8),
    ),
    Case(
        "lokr",
        "gpt2",
        LokrConfig(r=2, target_modules=["c_attn", "c_fc", "mlp.c_proj"]),
        lambda m: lokr_params(m, ["c_attn", "c_fc", "mlp.c_proj"], 2),
    ),
    Case(
        "lokr",
        "bert",
        LokrConfig(r=2, alpha=4, target_modules=BERT_TARGETS),
        lambda m: lokr_params(m, BERT_TARGETS, 2),
    ),
]
