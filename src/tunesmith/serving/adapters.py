"""What the server serves, by the `model` name of a request: the base, its adapters (any registered
method, PEFT layout), classifier runs and reward runs.

LoRA adapters are loaded into one copy of the base that shares its weights (so base and LoRA rows
mix in one forward, `mixed_adapters`); an adapter of another method gets a model of its own. A
directory's kind is told by its files: a classifier run has classifier.json, a reward run
reward_head.safetensors, a generation adapter adapter_config.json. Every adapter is first loaded
into a scratch copy, so a bad one fails (400) before anything that serves requests changes.
"""

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import TunesmithError
from ..methods.base import adapter_configs, adapter_layers
from ..methods.io import WEIGHTS_NAME, load_adapter, read_adapter_config
from ..methods.lora import mixed_adapters
from ..methods.registry import spec_for_peft_type
from ..utils.modules import replace_module
from .engine import Target
from .errors import ApiError, bad_request, unknown_model

log = logging.getLogger(__name__)
KINDS = {"generate": "chat and completions", "classify": "/v1/classify", "score": "/v1/score"}


@dataclass
class Served:
    """One servable name."""

    name: str
    kind: str  # a key of KINDS
    method: Optional[str] = None
    path: Optional[str] = None
    target: Optional[Target] = None  # kind "generate"
    scorer: Any = None  # classify: a predictor (labels, predict_proba); score: (model, tokenizer)
    created: int = field(default_factory=lambda: int(time.time()))
    inflight: int = 0  # requests using it, counted by the routes (unload waits for none)


class ModelRegistry:
    def __init__(
        self,
        model,
        tokenizer,
        base_name: str,
        adapter_root: Optional[str] = None,
        base_source: Optional[str] = None,
    ):
        """base_source: where a reward run's own copy of the base loads from (default base_name)."""
        self.base_name, self.tokenizer = base_name, tokenizer
        self.base_source = base_source or base_name
        self.adapter_root = Path(adapter_root).resolve() if adapter_root else None
        self._pristine = model.eval()
        self._mixed = _sharing_copy(model)  # the base plus every LoRA adapter
        self.entries = {
            base_name: Served(base_name, "generate", target=Target(self._mixed, None, True))
        }

    def get(self, name: str, kind: str) -> Served:
        entry = self.entries.get(name)
        if entry is None:
            raise unknown_model(name, list(self.entries))
        if entry.kind != kind:
            raise bad_request(
                f"model {name!r} is a {entry.kind} model, for {KINDS[entry.kind]}; "
                f"this endpoint needs a {kind} model",
                "wrong_model_kind",
            )
        return entry

    def add(self, name: str, path: str) -> Served:
        """Serve the run or adapter in directory `path` as `name`: prepare, then commit."""
        return self.commit(self.prepare(name, path))

    def prepare(self, name: str, path: str) -> Served:
        """Load and check what `path` holds, touching nothing that serves requests (any thread).
        Raises ApiError 400 for a taken name or a directory that does not load."""
        self._check_free(name)
        try:
            return self._build(name, Path(path))
        except TunesmithError as e:
            raise bad_request(f"cannot load {name!r} from {path}: {e}", "bad_adapter") from None

    def commit(self, entry: Served) -> Served:
        """Start serving a prepared entry (on the engine thread: it may change the shared model)."""
        self._check_free(entry.name)
        if entry.kind == "generate" and entry.target is None:  # LoRA: into the shared model
            load_adapter(self._mixed, entry.path, entry.name)
            entry.target = Target(self._mixed, entry.name, True)
        self.entries[entry.name] = entry
        log.info("serving %s (%s, %s) from %s", entry.name, entry.kind, entry.method, entry.path)
        return entry

    def _check_free(self, name: str) -> None:
        if name in self.entries:
            raise bad_request(f"a model named {name!r} is already loaded; unload it first")

    def check_under_root(self, path: str) -> str:
        """The resolved path; ApiError 400 unless it lies under --adapter-dir."""
        if self.adapter_root is None:
            raise bad_request(
                "run-time adapter loading is off: start the server with --adapter-dir"
            )
        resolved = Path(path if Path(path).is_absolute() else self.adapter_root / path).resolve()
        if not resolved.is_relative_to(self.adapter_root):
            raise bad_request(
                f"lora_path {path!r} is outside the adapter directory {self.adapter_root}",
                "path_outside_root",
            )
        return str(resolved)

    def remove(self, name: str) -> None:
        """Stop serving `name` (call it on the engine thread). ApiError 400 for the base, a name
        not loaded or one with requests in flight."""
        entry = self.entries.get(name)
        if entry is None:
            raise ApiError(404, f"no adapter named {name!r} is loaded", "model_not_found")
        if name == self.base_name:
            raise bad_request("the base model cannot be unloaded")
        if entry.inflight:
            raise bad_request(
                f"{name!r} has {entry.inflight} requests in flight; retry when they end"
            )
        if entry.target is not None and entry.target.model is self._mixed:
            _delete_mixed(self._mixed, name)
        del self.entries[name]

    def _build(self, name: str, path: Path) -> Served:
        from ..recipes.classify import LABELS_FILE
        from ..recipes.reward import HEAD_FILE

        if (path / LABELS_FILE).is_file():
            return Served(name, "classify", "classifier", str(path), scorer=_load_classifier(path))
        if (path / HEAD_FILE).is_file():
            return Served(name, "score", "reward", str(path), scorer=self._load_reward(path))
        return self._build_adapter(name, path)

    def _build_adapter(self, name: str, path: Path) -> Served:
        _refuse_pickles(path)
        spec = spec_for_peft_type(read_adapter_config(path)["peft_type"])
        scratch = copy.deepcopy(self._pristine)
        load_adapter(scratch, str(path), name)
        if _mixes(scratch, name):  # commit loads it into the shared model
            return Served(name, "generate", spec.name, str(path))
        return Served(name, "generate", spec.name, str(path), Target(scratch.eval(), None, False))

    def _load_reward(self, path: Path):
        from ..recipes.reward import load_reward_model

        return load_reward_model(str(path), self.base_source)


def _load_classifier(path: Path):
    from ..recipes.classify import load_predictor
    from ..tasks import load_config

    cfg = load_config(str(path / "config.yaml"), [f"output.dir={path}"])
    return load_predictor(cfg)


def _sharing_copy(model):
    """A copy of model's modules that shares its parameters and buffers (no weight memory)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def _mixes(model, name: str) -> bool:
    # Only plain LoRA factors mix per row; mixed_adapters refuses other adapters by name.
    try:
        with mixed_adapters(model, [name]):
            return True
    except TunesmithError:
        return False


def _delete_mixed(model, name: str) -> None:
    for path, layer in list(adapter_layers(model)):
        if name in layer.adapter_names:
            layer.delete_adapter(name)
            if not layer.adapter_names:  # mixed_adapters needs a factor on every LoRA layer
                replace_module(model, path, layer.base_layer)
    adapter_configs(model).pop(name, None)


def _refuse_pickles(path: Path) -> None:
    if path.is_dir() and not (path / WEIGHTS_NAME).is_file():
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        if pickles:
            raise bad_request(
                f"{path} holds {pickles[0]} but no {WEIGHTS_NAME}: only safetensors adapters load "
                f"(pickle files can run code); convert it with PEFT's save_pretrained",
                "bad_adapter",
            )
