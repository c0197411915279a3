"""Name -> MethodSpec. Methods register themselves on import of `tunesmith.methods`."""

from ..errors import ConfigError
from ..utils.modules import quantization_schemes
from .base import MethodSpec, adapter_configs

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


def run_step_hooks(model, step: int) -> None:
    """Call the `on_step` hook of every method loaded on model; trainers call this after each
    optimizer step (step counts from 1). Methods use it for schedules such as sparse pruning."""
    for adapter_name, cfg in adapter_configs(model).items():
        hook = get_method(cfg.name).on_step
        if hook is not None:
            hook(model, adapter_name, step)


def method_reports(model) -> dict:
    """The `report` metrics of every method loaded on model (e.g. the sparsity sparse training reached)."""
    metrics = {}
    for adapter_name, cfg in adapter_configs(model).items():
        report = get_method(cfg.name).report
        if report is not None:
            metrics.update(report(model, adapter_name))
    return metrics


def spec_for_peft_type(peft_type: str) -> MethodSpec:
    for spec in _REGISTRY.values():
        if spec.peft_type == peft_type:
            return spec
    raise ConfigError(
        f"adapter type {peft_type!r} is not supported; supported: "
        f"{', '.join(sorted(s.peft_type for s in _REGISTRY.values() if s.peft_type))}"
    )


def check_quantized_base(model, spec: MethodSpec) -> None:
    """Raise ConfigError when model has quantized linear layers and the method cannot sit on them
    (its spec lacks supports_4bit: it trains or rewrites base weights, e.g. full fine-tuning)."""
    schemes = quantization_schemes(model)
    if not schemes or spec.supports_4bit:
        return
    able = ", ".join(n for n, s in sorted(_REGISTRY.items()) if s.supports_4bit) or "none"
    raise ConfigError(
        f"method {spec.name!r} cannot train on a quantized base (the model holds "
        f"{', '.join(f'{n} {k} layers' for k, n in schemes.items())}): its quantized weights are "
        f"frozen codes. Use model.quantize=none for {spec.name!r}, or a method that supports a "
        f"quantized base ({able})"
    )
