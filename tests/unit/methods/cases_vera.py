"""Matrix cases for VeRA: per targeted (in, out) layer lambda_b (out,) and lambda_d (r,); the
shared random A and B are frozen buffers, not trained."""

from tests.unit.methods.matrix_support import Case, linear_shapes
from tunesmith.methods.vera import VeraConfig

BERT_TARGETS = r".*\.(query|key|value|dense)"  # not the MLM decoder (tied to the embeddings)


def vera_params(model, targets, r):
    return sum(o + r for _, o in linear_shapes(model, targets))


CASES = [
    Case(
        "vera",
        "llama",
        VeraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj"]),
        lambda m: vera_params(m, ["q_proj", "v_proj", "down_proj"], 8),
    ),
    # Not saved: the round trip regenerates A and B from projection_prng_key.
    Case(
        "vera-regenerated",
        "llama",
        VeraConfig(r=4, save_projection=False, projection_prng_key=7, target_modules="all-linear"),
        lambda m: vera_params(m, "all-linear", 4),
    ),
    Case(
        "vera",
        "gpt2",
        VeraConfig(r=8, target_modules=["c_attn", "c_proj"]),
        lambda m: vera_params(m, ["c_attn", "c_proj"], 8),
    ),
    Case(
        "vera",
        "bert",
        VeraConfig(r=8, target_modules=BERT_TARGETS),
        lambda m: vera_params(m, BERT_TARGETS, 8),
    ),
]
