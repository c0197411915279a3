"""What the config conversions of the weight-delta methods (LoHa, LoKr, VeRA, FourierFT, LN tuning)
share: the target check, PEFT's spelling of the targets, and refusing PEFT options they lack."""

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
    """The keys of PEFT config d that are set (and bias, when asked, unless "none")."""
    used = [k for k in keys if d.get(k)]
    if bias and d.get("bias", "none") != "none":
        used.append(f"bias={d['bias']!r}")
    return used


def refuse_options(used: list[str], method: str) -> None:
    """ConfigError naming the PEFT options an adapter of `method` uses that tunesmith lacks."""
    if used:
        raise ConfigError(
            f"this PEFT {method} adapter uses {', '.join(used)}, which tunesmith does not "
            f"support; save it again without that option"
        )
