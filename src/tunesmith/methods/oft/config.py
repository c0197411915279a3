"""OFT config: a block-diagonal orthogonal rotation R of each targeted layer's input, W' = W R^T.

Give the blocks either by count (`r`) or by size (`oft_block_size`), as PEFT does: exactly one
of them is non-zero and r x oft_block_size is the layer's in_features.
"""

from dataclasses import dataclass
from typing import Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError
from ..peft_options import ROTATION_UNSUPPORTED, options_set, peft_targets, refuse_options

PEFT_TYPE = "OFT"


@dataclass
class OftConfig(MethodConfig):
    name: str = opt("oft", "method name")
    r: int = opt(0, "number of orthogonal blocks per layer (0: derived from oft_block_size)")
    oft_block_size: int = opt(
        32, "size of each orthogonal block (0: derived from r); must divide in_features; 4-64"
    )
    target_modules: Union[str, list] = opt(
        ["q_proj", "v_proj"], "layer names (list), a full-name regex, or 'all-linear'"
    )
    coft: bool = opt(False, "constrained OFT: keep each block's skew matrix within eps of 0")
    eps: float = opt(6e-5, "COFT's radius (scaled by 1/sqrt(number of blocks)); used with coft")
    block_share: bool = opt(False, "one rotation block shared by all blocks of a layer")
    use_cayley_neumann: bool = opt(
        False,
        "approximate the Cayley transform's inverse by a Neumann series (faster, not exactly "
        "orthogonal; PEFT's default) instead of solving it exactly (the paper's)",
    )
    num_cayley_neumann_terms: int = opt(5, "Neumann series terms when use_cayley_neumann")
    module_dropout: float = opt(
        0.0, "multiplicative dropout: share of blocks set to the identity per training step"
    )

    def __post_init__(self):
        if (self.r != 0) == (self.oft_block_size != 0):
            raise ConfigError(
                f"give exactly one of method.r and method.oft_block_size (the other 0), got "
                f"r={self.r}, oft_block_size={self.oft_block_size}: r x oft_block_size is the "
                f"layer's in_features"
            )
        if self.r < 0 or self.oft_block_size < 0 or self.oft_block_size == 1:
            raise ConfigError(
                f"method.r and method.oft_block_size must be >= 0 (a block >= 2), got "
                f"r={self.r}, oft_block_size={self.oft_block_size}"
            )
        if not 0 <= self.module_dropout < 1:
            raise ConfigError(f"method.module_dropout must be in [0, 1), got {self.module_dropout}")
        if self.num_cayley_neumann_terms < 1:
            raise ConfigError(
                f"method.num_cayley_neumann_terms must be >= 1, got {self.num_cayley_neumann_terms}"
            )
        if not self.target_modules:
            raise ConfigError(
                "method.target_modules is empty; give layer names, a regex or 'all-linear'"
            )

    def blocks(self, in_features: int, where: str) -> tuple[int, int]:
        """(number of blocks, block size) for a layer with `in_features` inputs.

        Raises ConfigError when the block size or count does not divide in_features (PEFT would
        silently pick another size; here that is the user's choice to make).
        """
        given = self.oft_block_size or self.r
        if in_features % given or given > in_features:
            field = "oft_block_size" if self.oft_block_size else "r"
            divisors = [d for d in range(2, in_features + 1) if in_features % d == 0]
            raise ConfigError(
                f"method.{field}={given} does not divide the {in_features} inputs of {where}; "
                f"use one of {', '.join(map(str, divisors[:12]))}"
            )
        other = in_features // given
        return (other, given) if self.oft_block_size else (given, other)


def to_peft_config(cfg: OftConfig) -> dict:
    """The keys Hugging Face PEFT's OFTConfig reads from adapter_config.json."""
    return {
        "peft_type": PEFT_TYPE,
        "r": cfg.r,
        "oft_block_size": cfg.oft_block_size,
        "target_modules": peft_targets(cfg.target_modules),
        "module_dropout": cfg.module_dropout,
        "coft": cfg.coft,
        "eps": cfg.eps,
        "block_share": cfg.block_share,
        "use_cayley_neumann": cfg.use_cayley_neumann,
        "num_cayley_neumann_terms": cfg.num_cayley_neumann_terms,
        "fan_in_fan_out": False,
        "init_weights": True,
        **ROTATION_UNSUPPORTED,
        # PEFT reads a Neumann-series adapter without this version as the pre-0.18 series (and
        # warns); ours computes the series as PEFT 0.18 and later do.
        **({"peft_version": "0.18.0"} if cfg.use_cayley_neumann else {}),
    }


def from_peft_config(d: dict) -> OftConfig:
    refuse_options(options_set(d, ROTATION_UNSUPPORTED), "OFT")
    if "oft_block_size" not in d:
        raise ConfigError(
            "this OFT adapter was written before PEFT 0.14 (no oft_block_size): its weights use the "
            "old OFT layout, which neither PEFT nor tunesmith reads now; train it again"
        )
    return OftConfig(
        r=d.get("r", 0),
        oft_block_size=d["oft_block_size"],
        target_modules=d["target_modules"],
        coft=d.get("coft", False),
        eps=d.get("eps", 6e-5),
        block_share=d.get("block_share", False),
        use_cayley_neumann=d.get("use_cayley_neumann", True),  # PEFT's default when absent
        num_cayley_neumann_terms=d.get("num_cayley_neumann_terms", 5),
        module_dropout=d.get("module_dropout", 0.0),
    )
