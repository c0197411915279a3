"""Matrix cases for OFT: per targeted layer, k blocks of b x b skew-symmetric generators, each
stored as its b(b-1)/2 upper-triangular entries (k = in_features / b; one block with block_share)."""

from tests.unit.methods.matrix_support import Case, linear_shapes
from tunesmith.methods.oft import OftConfig


def oft_params(model, targets, block, share=False):
    return sum(
        (1 if share else i // block) * block * (block - 1) // 2
        for i, _ in linear_shapes(model, targets)
    )


BERT_LINEARS = r".*\.(query|key|value|dense)"

CASES = [
    Case(
        "oft",
        "llama",
        OftConfig(oft_block_size=4, target_modules=["q_proj", "v_proj", "down_proj"]),
        lambda m: oft_params(m, ["q_proj", "v_proj", "down_proj"], 4),
    ),
    Case(
        "oft-r-neumann",
        "llama",
        OftConfig(r=2, oft_block_size=0, use_cayley_neumann=True, target_modules="all-linear"),
        # r = 2 blocks per layer: b = in / 2 (8 for hidden 16, 16 for the 32-wide down_proj)
        lambda m: sum(2 * (i // 2) * (i // 2 - 1) // 2 for i, _ in linear_shapes(m, "all-linear")),
    ),
    Case(
        "oft-share-coft",
        "llama",
        OftConfig(oft_block_size=8, block_share=True, coft=True, eps=1e-2),
        lambda m: oft_params(m, ["q_proj", "v_proj"], 8, share=True),
    ),
    Case(
        "oft",
        "gpt2",
        OftConfig(oft_block_size=4, target_modules=["c_attn", "c_fc"]),
        lambda m: oft_params(m, ["c_attn", "c_fc"], 4),
    ),
    Case(
        "oft",
        "bert",
        # Every linear layer but the MLM decoder (tied to the input embeddings, which a merge would
        # rotate too); on query/value alone BERT's dropout moves the 5-step loss more than OFT does.
        OftConfig(oft_block_size=8, target_modules=BERT_LINEARS),
        lambda m: oft_params(m, BERT_LINEARS, 8),
    ),
]
