"""BOFT config: a butterfly product of block-diagonal orthogonal rotations of each targeted layer's
input, and a scale per output, W' = diag(s) W M^T.

PEFT's keys and rules: the blocks are given by size (`boft_block_size`) or by count
(`boft_block_num`), exactly one of them non-zero, with size x count = the layer's in_features.
`boft_n_butterfly_factor` = f counts the factors (f = 1 is OFT); with f > 1 the block size must be
even and the count a multiple of 2^(f-1).
"""

from dataclasses import dataclass
from typing import Union

from ...config.fields import opt
from ...config.schema import MethodConfig
from ...errors import ConfigError
from ..peft_options import (
    ROTATION_UNSUPPORTED,
    check_targets,
    options_set,
    peft_targets,
    refuse_options,
)

PEFT_TYPE = "BOFT"


@dataclass
class BoftConfig(MethodConfig):
    name: str = opt("boft", "method name")
    boft_block_size: int = opt(
        4, "size of each orthogonal block (0: derived from boft_block_num); 4-32"
    )
    boft_block_num: int = opt(
        0, "number of orthogonal blocks per layer and factor (0: derived from boft_block_size)"
    )
    boft_n_butterfly_factor: int = opt(
        1, "number of butterfly factors (1: plain OFT; each more doubles the block's reach)"
    )
    target_modules: Union[str, list] = opt(
        ["q_proj", "v_proj"], "layer names (list), a full-name regex, or 'all-linear'"
    )
    boft_dropout: float = opt(
        0.0, "multiplicative dropout: share of one factor's blocks set to the identity per step"
    )
    init_weights: bool = opt(
        True, "true: R = 0 and s = 1, so the model starts unchanged (PEFT's default); false: random"
    )

    def __post_init__(self):
        size, num = self.boft_block_size, self.boft_block_num
        if (size != 0) == (num != 0) or size < 0 or num < 0:
            raise ConfigError(
                f"give exactly one of method.boft_block_size and method.boft_block_num (the other "
                f"0), got boft_block_size={size}, boft_block_num={num}: their product is the "
                f"layer's in_features"
            )
        if self.boft_n_butterfly_factor < 1:
            raise ConfigError(
                f"method.boft_n_butterfly_factor must be >= 1 (1 is plain OFT), got "
                f"{self.boft_n_butterfly_factor}"
            )
        if not 0 <= self.boft_dropout < 1:
            raise ConfigError(f"method.boft_dropout must be in [0, 1), got {self.boft_dropout}")
        check_targets(self.target_modules)

    def blocks(self, in_features: int, where: str) -> tuple[int, int]:
        """(blocks per factor, block size) for a layer with `in_features` inputs.

        Raises ConfigError, naming the values that fit, when the size or count does not divide
        in_features or does not suit the butterfly factors (PEFT's rules).
        """
        field = "boft_block_size" if self.boft_block_size else "boft_block_num"
        given = getattr(self, field)
        layout = self._layout(in_features, given)
        if layout is None:
            fits = [v for v in range(1, in_features + 1) if self._layout(in_features, v)]
            raise ConfigError(
                f"method.{field}={given} does not fit the {in_features} inputs of {where} with "
                f"boft_n_butterfly_factor={self.boft_n_butterfly_factor} (size x count = "
                f"in_features; with factors > 1 an even size and a count that is a multiple of "
                f"2^(factors - 1)); use one of {', '.join(map(str, fits[:12])) or 'none'}"
            )
        return layout

    def _layout(self, in_features: int, given: int):
        # (count, size) when `given` (of the field in use) fits in_features, else None.
        if given > in_features or in_features % given:
            return None
        other = in_features // given
        num, size = (other, given) if self.boft_block_size else (given, other)
        levels = self.boft_n_butterfly_factor - 1
        if levels and (size % 2 or num % 2**levels):
            return None
        return num, size


def to_peft_config(cfg: BoftConfig) -> dict:
    """The keys Hugging Face PEFT's BOFTConfig reads from adapter_config.json."""
    return {
        "peft_type": PEFT_TYPE,
        "boft_block_size": cfg.boft_block_size,
        "boft_block_num": cfg.boft_block_num,
        "boft_n_butterfly_factor": cfg.boft_n_butterfly_factor,
        "target_modules": peft_targets(cfg.target_modules),
        "boft_dropout": cfg.boft_dropout,
        "fan_in_fan_out": False,
        "init_weights": cfg.init_weights,
        **ROTATION_UNSUPPORTED,
    }


def from_peft_config(d: dict) -> BoftConfig:
    """A BoftConfig from PEFT's keys. fan_in_fan_out is accepted whatever its value: the layer's
    type tells the weight's layout (PEFT too resets it to false on nn.Linear)."""
    refuse_options(options_set(d, ROTATION_UNSUPPORTED), "BOFT")
    return BoftConfig(
        boft_block_size=d.get("boft_block_size", 4),
        boft_block_num=d.get("boft_block_num", 0),
        boft_n_butterfly_factor=d.get("boft_n_butterfly_factor", 1),
        target_modules=d["target_modules"],
        boft_dropout=d.get("boft_dropout", 0.0),
        init_weights=bool(d.get("init_weights", True)),
    )
