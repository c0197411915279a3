"""task.mode=features: frozen-model embeddings (task.pooling token of layer features.layer) fed to a
scikit-learn logistic regression or small MLP. Embeddings are cached on disk (models.embeddings), so
trying other classifiers or C values costs seconds.

The fitted classifier is stored as its parameters, not as a pickle: the arrays (scaler mean/scale,
coefficients, intercepts, classes) in feature_classifier.safetensors and the estimator's
hyper-parameters in feature_classifier.json. Loading checks keys and shapes, then sets the
attributes on fresh scikit-learn objects, so predict_proba gives the same numbers.
"""

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ....config.fields import opt
from ....config.schema import RunConfig
from ....data.classification import LabelledSplits
from ....data.resampling import RESAMPLERS, resample_features
from ....errors import CheckpointError, ConfigError
from ....models.embeddings import Embedder
from ....utils.distributed import is_main_process
from ....utils.files import atomic_path, atomic_write_text
from .common import texts_of
from .registry import ModeSpec, register_mode

log = logging.getLogger(__name__)
ARRAYS_FILE = "feature_classifier.safetensors"
PARAMS_FILE = "feature_classifier.json"
CLASSIFIERS = ("logreg", "mlp")


@dataclass
class FeaturesConfig:
    """The `features:` section (task.mode=features)."""

    layer: int = opt(-1, "hidden-state layer to read (0 = embeddings, -1 = last)")
    classifier: str = opt("logreg", "logreg (logistic regression) or mlp (small MLP)")
    c: float = opt(1.0, "inverse regularisation strength C of the logistic regression")

    def __post_init__(self):
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(
                f"features.classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}"
            )
        if self.c <= 0:
            raise ConfigError(f"features.c must be > 0, got {self.c}")


def make_embedder(cfg: RunConfig) -> Embedder:
    return Embedder(
        cfg.model.name,
        cfg.task.pooling,
        cfg.features.layer,
        cfg.data.max_length,
        cfg.eval.batch_size,
        bf16=cfg.train.precision == "bf16",
    )


class FeaturePredictor:
    def __init__(self, embedder: Embedder, classifier, labels: list):
        self.embedder, self.classifier, self.labels = embedder, classifier, labels

    def predict_proba(self, examples: list) -> np.ndarray:
        x = self.embedder.embed(texts_of(examples))  # (N, F)
        expected = self.classifier[0].n_features_in_
        if x.shape[1] != expected:
            raise CheckpointError(
                f"the feature classifier reads {expected} features but model.name="
                f"{self.embedder.name} layer {self.embedder.layer} gives {x.shape[1]}; "
                f"use the model and features.layer it was trained with"
            )
        probs = self.classifier.predict_proba(x)
        out = np.zeros((len(examples), len(self.labels)), dtype=np.float32)
        out[:, self.classifier.classes_] = probs  # classes_ are label indices
        return out


def _sklearn():
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import LabelBinarizer, StandardScaler
    except ImportError:
        raise ConfigError(
            "task.mode=features needs scikit-learn: pip install scikit-learn"
        ) from None
    return LogisticRegression, MLPClassifier, make_pipeline, StandardScaler, LabelBinarizer


def build_classifier(cfg: RunConfig):
    """A scikit-learn pipeline: standardise, then logistic regression or an MLP."""
    logreg, mlp, make_pipeline, scaler, _ = _sklearn()
    weight = "balanced" if cfg.task.class_weights else None
    if cfg.features.classifier == "mlp":
        if weight:
            raise ConfigError(
                "task.class_weights is not supported by the MLP classifier; use "
                "features.classifier=logreg or data.balance=oversample"
            )
        head = mlp(
            hidden_layer_sizes=(256,),
            early_stopping=True,
            max_iter=300,
            random_state=cfg.train.seed,
        )
    else:
        head = logreg(C=cfg.features.c, max_iter=5000, class_weight=weight)
    return make_pipeline(scaler(), head)


def fit_features(cfg: RunConfig, splits: LabelledSplits, out: Path, progress: bool = False):
    """Embed the training split, fit the classifier; returns (FeaturePredictor, info)."""
    embedder = make_embedder(cfg)
    start = time.perf_counter()
    x = embedder.embed(texts_of(splits.train))  # (N, F)
    y = np.array([splits.labels.index(e.label) for e in splits.train])
    resampled = {}
    if cfg.data.balance in RESAMPLERS:  # in feature space, after the (cached) embedding
        x, y = resample_features(cfg.data.balance, x, y, cfg.train.seed)
        resampled = {"resampled_train": {splits.labels[k]: int(n) for k, n in _counts(y)}}
        log.info("data.balance=%s: training counts now %s", cfg.data.balance, resampled)
    fit_start = time.perf_counter()
    classifier = build_classifier(cfg).fit(x, y)
    fit_seconds = time.perf_counter() - fit_start
    save_classifier(classifier, out)
    info = {
        "train_seconds": round(time.perf_counter() - start, 1),
        "embed_seconds": round(embedder.seconds, 1),
        "fit_seconds": round(fit_seconds, 2),
        "embeddings_from_cache": embedder.cache_hits > 0,
        "trainable_params": int(sum(np.size(c) for c in _coefficients(classifier))),
        "feature_dim": x.shape[1],
        **resampled,
    }
    log.info(
        "features: %d x %d, %s fitted in %.2f s", *x.shape, cfg.features.classifier, fit_seconds
    )
    return FeaturePredictor(embedder, classifier, splits.labels), info


def load_features(cfg: RunConfig, out: Path, labels: list) -> FeaturePredictor:
    classifier = load_classifier(out)
    if int(classifier.classes_.max()) >= len(labels):
        raise CheckpointError(
            f"{Path(out) / ARRAYS_FILE}: class index {int(classifier.classes_.max())} is beyond "
            f"the {len(labels)} labels of classifier.json"
        )
    return FeaturePredictor(make_embedder(cfg), classifier, labels)


def save_classifier(pipeline, out: Path) -> None:
    """The fitted pipeline's arrays to out/feature_classifier.safetensors, the rest to its .json."""
    if not is_main_process():  # under torchrun, rank 0 alone writes the run's files
        return
    from safetensors.numpy import save_file

    scaler, head = pipeline[0], pipeline[-1]
    kind = "mlp" if hasattr(head, "coefs_") else "logreg"
    arrays = {"scaler.mean": scaler.mean_, "scaler.scale": scaler.scale_, "classes": head.classes_}
    if kind == "mlp":
        arrays.update({f"coefs.{i}": c for i, c in enumerate(head.coefs_)})
        arrays.update({f"intercepts.{i}": b for i, b in enumerate(head.intercepts_)})
    else:
        arrays.update({"coef": head.coef_, "intercept": head.intercept_})
    meta = {
        "kind": kind,
        "n_features": int(scaler.n_features_in_),
        "params": _plain(head.get_params()),
        "scaler_params": _plain(scaler.get_params()),
    }
    if kind == "mlp":
        meta.update(n_layers=int(head.n_layers_), out_activation=head.out_activation_)
    with atomic_path(Path(out) / ARRAYS_FILE) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    atomic_write_text(Path(out) / PARAMS_FILE, json.dumps(meta, indent=2))


def load_classifier(out: Path):
    """The pipeline save_classifier wrote in out, checked and rebuilt; CheckpointError if malformed."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    arrays_path, params_path = Path(out) / ARRAYS_FILE, Path(out) / PARAMS_FILE
    for path in (arrays_path, params_path):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: train the feature-based classifier first")
    try:
        meta = json.loads(params_path.read_text())
        arrays = load_file(str(arrays_path))
    except (ValueError, SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{out}: the feature classifier files are damaged ({e}); train again"
        ) from None
    _check(meta, arrays, arrays_path)
    return _rebuild(meta, arrays)


def _check(meta: dict, arrays: dict, path: Path) -> None:
    if (
        not isinstance(meta, dict)
        or meta.get("kind") not in CLASSIFIERS
        or not isinstance(meta.get("n_features"), int)
    ):
        raise CheckpointError(
            f"{path.with_suffix('.json')}: not a feature classifier description (kind, n_features)"
        )
    n_features, n_layers = meta["n_features"], meta.get("n_layers", 2)
    if not isinstance(n_layers, int) or n_layers < 2:
        raise CheckpointError(
            f"{path.with_suffix('.json')}: n_layers must be an integer >= 2, got {n_layers!r}"
        )
    if meta["kind"] == "mlp":
        names = [f"coefs.{i}" for i in range(n_layers - 1)] + [
            f"intercepts.{i}" for i in range(n_layers - 1)
        ]
    else:
        names = ["coef", "intercept"]
    missing = [k for k in ["scaler.mean", "scaler.scale", "classes", *names] if k not in arrays]
    if missing:
        raise CheckpointError(
            f"{path}: missing {', '.join(missing)}; train the feature classifier again"
        )
    n_classes = len(arrays["classes"])
    n_out = 1 if n_classes == 2 else n_classes
    expected = {
        "scaler.mean": (n_features,),
        "scaler.scale": (n_features,),
        "classes": (n_classes,),
    }
    if meta["kind"] == "mlp":
        width = n_features
        for i in range(n_layers - 1):
            out_width = arrays[f"coefs.{i}"].shape[-1] if i < n_layers - 2 else n_out
            expected[f"coefs.{i}"], expected[f"intercepts.{i}"] = (width, out_width), (out_width,)
            width = out_width
    else:
        expected.update(coef=(n_out, n_features), intercept=(n_out,))
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(arrays[name].shape)}, expected {shape} for "
                f"{n_features} features and {n_classes} classes"
            )


def _rebuild(meta: dict, arrays: dict):
    logreg, mlp, make_pipeline, scaler_cls, binarizer = _sklearn()
    scaler = scaler_cls(**meta["scaler_params"])
    scaler.mean_, scaler.scale_ = arrays["scaler.mean"], arrays["scaler.scale"]
    scaler.var_ = arrays["scaler.scale"] ** 2
    scaler.n_features_in_, scaler.n_samples_seen_ = meta["n_features"], 0
    params = dict(meta["params"])
    if meta["kind"] == "mlp":
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        head = mlp(**params)
        n = meta["n_layers"] - 1
        head.coefs_ = [arrays[f"coefs.{i}"] for i in range(n)]
        head.intercepts_ = [arrays[f"intercepts.{i}"] for i in range(n)]
        head.n_layers_, head.out_activation_ = meta["n_layers"], meta["out_activation"]
        head.n_outputs_ = head.coefs_[-1].shape[1]
        head._label_binarizer = binarizer().fit(arrays["classes"])
    else:
        head = logreg(**params)
        head.coef_, head.intercept_ = arrays["coef"], arrays["intercept"]
    head.classes_, head.n_features_in_ = arrays["classes"], meta["n_features"]
    return make_pipeline(scaler, head)


def _plain(params: dict) -> dict:
    """Hyper-parameters as JSON types (tuples become lists); anything else is a bug worth seeing."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    json.dumps(plain)  # raises TypeError on a non-JSON value
    return plain


def _counts(y: np.ndarray) -> list:
    classes, counts = np.unique(y, return_counts=True)
    return list(zip(classes.tolist(), counts.tolist()))


def _coefficients(pipeline) -> list:
    head = pipeline[-1]
    if hasattr(head, "coef_"):
        return [head.coef_, head.intercept_]
    return list(head.coefs_) + list(head.intercepts_)


register_mode(
    ModeSpec(
        name="features",
        help="frozen embeddings -> scikit-learn logistic regression or MLP",
        fit=fit_features,
        load=load_features,
        section=("features", FeaturesConfig),
        trains=False,
        feature_space=True,
        aliases={"feature_layer": "layer", "feature_classifier": "classifier", "feature_c": "c"},
    )
)
