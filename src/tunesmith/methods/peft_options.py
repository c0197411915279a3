"""What the config conversions of the methods with a PEFT format share (LoHa, LoKr, VeRA,
FourierFT, LN tuning, OFT, BOFT ...): the target check, PEFT's spelling of the targets, and
refusing PEFT options they lack."""

from ..errors import ConfigError


def check_targets(target_modules) -> None:
    if not target_modules:
        raise ConfigError(
            "method.target_modules is empty; give layer names, a regex or 'all-linear'"
        )


def peft_targets(targets):
    """target_modules as adapter_config.json holds them: a regex (or None) as is, names sorted."""
    return targets if targets is None or isinstance(targets, str) else sorted(targets)


def used_options(d: dict, keys, bias: bool = False) -> list[str]:
    """options_set for `keys` unused when empty (and bias, when asked, unless "none")."""
    return options_set(d, {key: None for key in keys} | ({"bias": "none"} if bias else {}))


# PEFT options the rotation methods (OFT, BOFT) lack, each with the value that means "not used":
# written so to adapter_config.json, and refused on load when set to anything else.
ROTATION_UNSUPPORTED = {
    "bias": "none",
    "modules_to_save": None,
    "exclude_modules": None,
    "layers_to_transform": None,
    "layers_pattern": None,
}


def options_set(d: dict, unused: dict) -> list[str]:
    """The options of PEFT config d set to other than their `unused` value, as "key=value" (a
    missing key, None and an empty list, dict or string count as unused too)."""
    empty = (None, [], {}, "")
    return [
        f"{key}={d[key]!r}" for key, off in unused.items() if d.get(key, off) not in (off, *empty)
    ]


def refuse_options(used: list[str], method: str) -> None:
    """ConfigError naming the PEFT options an adapter of `method` uses that tunesmith lacks."""
    if used:
        raise ConfigError(
            f"this PEFT {method} adapter uses {', '.join(used)}, which tunesmith does not "
            f"support; save it again without that option"
        )
