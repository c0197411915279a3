"""Feature-based classification: frozen-model embeddings (task.pooling token of layer
task.feature_layer) fed to a scikit-learn logistic regression or small MLP. Embeddings are cached
on disk (models.embeddings), so trying other classifiers or C values costs seconds."""
import logging
import pickle
import time
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..config.schema import RunConfig
from ..data.classification import LabelledSplits
from ..models.embeddings import Embedder
from ..utils.files import atomic_path

log = logging.getLogger(__name__)
MODEL_FILE = "feature_classifier.pkl"


def make_embedder(cfg: RunConfig) -> Embedder:
    return Embedder(cfg.model.name, cfg.task.pooling, cfg.task.feature_layer, cfg.data.max_length,
                    cfg.eval.batch_size, bf16=cfg.train.precision == "bf16")


class FeaturePredictor:
    def __init__(self, embedder: Embedder, classifier, labels: list):
        self.embedder, self.classifier, self.labels = embedder, classifier, labels

    def predict_proba(self, examples: list) -> np.ndarray:
        probs = self.classifier.predict_proba(self.embedder.embed(texts_of(examples)))
        out = np.zeros((len(examples), len(self.labels)), dtype=np.float32)
        out[:, self.classifier.classes_] = probs  # classes_ are label indices
        return out


def texts_of(examples: list) -> list[str]:
    """Input texts, a text pair joined to its text by a newline."""
    return [e.text if e.pair is None else f"{e.text}\n{e.pair}" for e in examples]


def build_classifier(cfg: RunConfig):
    """A scikit-learn pipeline: standardise, then logistic regression or an MLP."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ConfigError("task.mode=features needs scikit-learn: pip install scikit-learn") from None
    weight = "balanced" if cfg.task.class_weights else None
    if cfg.task.feature_classifier == "mlp":
        if weight:
            raise ConfigError("task.class_weights is not supported by the MLP classifier; use "
                              "task.feature_classifier=logreg or data.balance=oversample")
        head = MLPClassifier(hidden_layer_sizes=(256,), early_stopping=True, max_iter=300, random_state=cfg.train.seed)
    else:
        head = LogisticRegression(C=cfg.task.feature_c, max_iter=5000, class_weight=weight)
    return make_pipeline(StandardScaler(), head)


def fit_features(cfg: RunConfig, splits: LabelledSplits, out: Path, progress: bool = False):
    """Embed the training split, fit the classifier; returns (FeaturePredictor, info)."""
    embedder = make_embedder(cfg)
    start = time.perf_counter()
    x = embedder.embed(texts_of(splits.train))
    y = np.array([splits.labels.index(e.label) for e in splits.train])
    fit_start = time.perf_counter()
    classifier = build_classifier(cfg).fit(x, y)
    fit_seconds = time.perf_counter() - fit_start
    with atomic_path(out / MODEL_FILE) as tmp:
        tmp.write_bytes(pickle.dumps(classifier))
    info = {"train_seconds": round(time.perf_counter() - start, 1), "embed_seconds": round(embedder.seconds, 1),
            "fit_seconds": round(fit_seconds, 2), "embeddings_from_cache": embedder.cache_hits > 0,
            "trainable_params": int(sum(np.size(c) for c in _coefficients(classifier))), "feature_dim": x.shape[1]}
    log.info("features: %d x %d, %s fitted in %.2f s", *x.shape, cfg.task.feature_classifier, fit_seconds)
    return FeaturePredictor(embedder, classifier, splits.labels), info


def load_features(cfg: RunConfig, out: Path, labels: list) -> FeaturePredictor:
    path = Path(out) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: train the feature-based classifier first")
    return FeaturePredictor(make_embedder(cfg), pickle.loads(path.read_bytes()), labels)


def _coefficients(pipeline) -> list:
    head = pipeline[-1]
    if hasattr(head, "coef_"):
        return [head.coef_, head.intercept_]
    return list(head.coefs_) + list(head.intercepts_)
