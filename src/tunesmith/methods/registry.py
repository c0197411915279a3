"""Name -> MethodSpec. Methods register themselves on import of `tunesmith.methods`."""
from ..config.errors import ConfigError
from .base import MethodSpec

_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def config_classes() -> dict[str, type]:
    return {name: spec.config_cls for name, spec in _REGISTRY.items()}


def spec_for_peft_type(peft_type: str) -> MethodSpec:
    for spec in _REGISTRY.values():
        if spec.peft_type == peft_type:
            return spec
    raise ConfigError(f"adapter type {peft_type!r} is not supported; supported: "
                      f"{', '.join(sorted(s.peft_type for s in _REGISTRY.values() if s.peft_type))}")
