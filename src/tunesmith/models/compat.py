"""What differs between the transformers releases tunesmith supports (5.0 up to 5.24).

5.24 renamed the KV-cache keyword of the models' forward, and the output field that returns the
cache, from `past_key_values` to `cache`. The old keyword still works there (with a
FutureWarning), but forward hooks see the keywords as the caller wrote them (5.24's generate and
its CausalLM heads pass `cache`), and when both names are set the model keeps `cache` and drops
the other. So code that reads, sets or strips the cache asks `cache_kwarg(model)` for the name.
"""

import functools
import inspect

from torch import nn

CACHE_NAMES = ("cache", "past_key_values")  # 5.24's name, the older one


def cache_kwarg(model: nn.Module) -> str:
    """The KV-cache keyword of `model.forward`: "cache" (transformers >= 5.24) or "past_key_values".

    Read from the forward's signature, so models written for either release (remote code
    included) get their own name; a forward that takes neither gets "past_key_values".
    """
    return _cache_kwarg(type(model))


@functools.lru_cache(maxsize=None)
def _cache_kwarg(cls: type) -> str:
    params = inspect.signature(
        cls.forward
    ).parameters  # follows functools.wraps to the real forward
    return next((name for name in CACHE_NAMES if name in params), CACHE_NAMES[1])


def move_cache_kwarg(model: nn.Module, kwargs: dict) -> str:
    """Move a cache passed under the other name to `kwargs[cache_kwarg(model)]` (in place), as the
    model itself would later; returns that name. When both hold a cache, the model's name wins."""
    name = cache_kwarg(model)
    for other in CACHE_NAMES:
        if other != name and other in kwargs:
            value = kwargs.pop(other)
            if kwargs.get(name) is None:
                kwargs[name] = value
    return name
