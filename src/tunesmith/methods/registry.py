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


def _hooks(model, field: str):
    # (adapter name, hook) for every loaded adapter whose method defines the hook `field`.
    for adapter_name, cfg in adapter_configs(model).items():
        hook = getattr(get_method(cfg.name), field)
        if hook is not None:
            yield adapter_name, hook


def run_train_begin_hooks(model, total_updates: int) -> None:
    """Call `on_train_begin` of every loaded method: trainers call this once before the first
    step, with the run's number of optimizer updates (schedules such as AdaLoRA's need it)."""
    for adapter_name, hook in _hooks(model, "on_train_begin"):
        hook(model, adapter_name, total_updates)


def run_update_hooks(model, update: int) -> None:
    """Call `on_update` of every loaded method after optimizer update `update` (from 1), while the
    gradients of that update are still on the parameters (AdaLoRA's importance scores use them)."""
    for adapter_name, hook in _hooks(model, "on_update"):
        hook(model, adapter_name, update)


def has_regularizers(model) -> bool:
    return any(True for _ in _hooks(model, "regularizer"))


def method_regularizer(model):
    """The sum of the loaded methods' loss regularisers (a tensor), or None when none has one."""
    terms = [hook(model, name) for name, hook in _hooks(model, "regularizer")]
    terms = [t for t in terms if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


class MethodStates:
    """The loaded methods' own training state as one flat {"<adapter>/<key>": tensor} dict, for
    checkpoints (state_dict) and resume (load_state_dict)."""

    def __init__(self, model):
        self.model = model

    def state_dict(self) -> dict:
        out = {}
        for adapter_name, hook in _hooks(self.model, "state_dict"):
            out.update(
                {f"{adapter_name}/{k}": v for k, v in hook(self.model, adapter_name).items()}
            )
        return out

    def load_state_dict(self, tensors: dict) -> None:
        """Raises ConfigError for state of an adapter this model does not hold or whose method
        keeps none (the checkpoint belongs to another run)."""
        loaders = dict(_hooks(self.model, "load_state"))
        grouped: dict[str, dict] = {name: {} for name in loaders}
        for key, tensor in tensors.items():
            adapter_name, _, rest = key.partition("/")
            if adapter_name not in loaders:
                raise ConfigError(
                    f"the checkpoint holds method state {key!r} for adapter {adapter_name!r}, which "
                    f"this model does not hold with a method that keeps state: it was written by "
                    f"another run; use another output.dir or train.resume=false"
                )
            grouped[adapter_name][rest] = tensor
        for adapter_name, loader in loaders.items():
            loader(self.model, adapter_name, grouped[adapter_name])
