"""Support for the method matrix: the Case record and shape helpers for parameter formulas."""

from dataclasses import dataclass
from typing import Callable

from tests.tiny import tiny_bert, tiny_gpt2, tiny_llama
from tunesmith.methods.base import find_target_linears
from tunesmith.utils.modules import linear_dims

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}
DECODERS = {"llama", "gpt2"}  # architectures that generate text (BERT is a masked LM)


@dataclass
class Case:
    """One method x architecture cell: the config to apply and the expected trainable count."""

    id: str
    arch: str
    cfg: object
    expected_trainable: Callable  # base model -> int, from a closed-form formula
    identity_at_init: bool = True  # output equals the base model right after apply
    atol: float = 0.0  # tolerance of that equality (0: exact)

    def __str__(self):
        return f"{self.id}-{self.arch}"


def linear_shapes(model, targets) -> list[tuple[int, int]]:
    """(in, out) of every linear layer `targets` selects, as the methods select them."""
    return [linear_dims(model.get_submodule(n)) for n in find_target_linears(model, targets)]
