"""Matrix cases for BOFT: per targeted layer, f butterfly factors of k = in / b blocks, each a full
b x b matrix (its skew part is used), plus one scale per output:

    f * (in / b) * b * b + out = f * in * b + out   (b = in / boft_block_num when a count is given)
"""

from tests.unit.methods.matrix_support import Case, linear_shapes
from tunesmith.methods.boft import BoftConfig


def boft_params(model, targets, factors, block=0, count=0):
    total = 0
    for i, o in linear_shapes(model, targets):
        b = block or i // count
        total += factors * (i // b) * b * b + o
    return total


LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]
BERT_LINEARS = r".*\.(query|key|value|dense)"  # not the MLM decoder (tied to the embeddings)

CASES = [
    Case(
        "boft",
        "llama",
        BoftConfig(boft_block_size=4, target_modules=LLAMA_TARGETS),
        lambda m: boft_params(m, LLAMA_TARGETS, factors=1, block=4),
    ),
    Case(
        "boft-butterfly",
        "llama",
        # 3 factors of 2 x 2 blocks: each input mixes with 2^3 = 8 others (hidden 16, down_proj 32)
        BoftConfig(boft_block_size=2, boft_n_butterfly_factor=3, target_modules="all-linear"),
        lambda m: boft_params(m, "all-linear", factors=3, block=2),
    ),
    Case(
        "boft-block-num",
        "llama",
        BoftConfig(
            boft_block_size=0,
            boft_block_num=4,
            boft_n_butterfly_factor=2,
            target_modules=LLAMA_TARGETS,
        ),
        lambda m: boft_params(m, LLAMA_TARGETS, factors=2, count=4),
    ),
    Case(
        "boft-butterfly",
        "gpt2",
        BoftConfig(boft_block_size=4, boft_n_butterfly_factor=2, target_modules=["c_attn", "c_fc"]),
        lambda m: boft_params(m, ["c_attn", "c_fc"], factors=2, block=4),
    ),
    Case(
        "boft-butterfly",
        "bert",
        BoftConfig(boft_block_size=4, boft_n_butterfly_factor=2, target_modules=BERT_LINEARS),
        lambda m: boft_params(m, BERT_LINEARS, factors=2, block=4),
    ),
]
