from .generation import generate
from .metrics import contains_match, exact_match, normalize, rouge_l
from .perplexity import mean_loss, perplexity

__all__ = [
    "contains_match",
    "exact_match",
    "generate",
    "mean_loss",
    "normalize",
    "perplexity",
    "rouge_l",
]
