"""How good a run's samples are: the Fréchet distance, precision and recall in the features of a classifier
trained on the same data set (``vaekit quality``).

Inception features (FID, Heusel et al. 2017) need weights that cannot be downloaded offline and say little
about 28x28 grayscale images; for such data the practice is the same distance in the penultimate layer of a
classifier trained on the data set's own labels (the "Fréchet classifier distance"). Here:

- ``frechet_distance(a, b)``: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of the two sets' means and
  covariances, in float64; ``gaussian_frechet_distance`` is the same closed form from given moments.
- ``precision_recall(real, fake, k)``: Kynkäänniemi et al. (2019): the share of fake samples inside the k-NN
  manifold of the real ones (precision: are samples realistic?) and of real ones inside the fake manifold
  (recall: is the data's variety covered?), computed in chunks so memory stays bounded.
- ``feature_classifier(dataset)``: a small convolutional classifier trained on the training split's labels
  (any image size and channel count) and kept in the cache (``$XDG_CACHE_HOME/vaekit/quality/<key>/``, JSON +
  safetensors), keyed by a digest of the data set and the settings; its test accuracy says how much to trust it.
- ``sample_quality(vae, dataset)``: all of it for a trained run's samples (any ``sampler`` of ``VAE.sample``;
  the decoder's means, or draws x ~ p(x|z) with ``draw=True``) against the data set's test split, with the same
  numbers for N training images against the test split: the floor a perfect model would reach at this N.

The classifier is trained on sharp data images, so smooth (blurry) decoder means lie off its feature manifold:
expect a large FD and a recall near 0 for them, and compare runs, samplers and sample sizes with each other and
with the floor, not with FIDs of other papers.

Depends on ``vaekit.data`` only; the model is anything with ``sample(n, seed=...)``, such as ``vaekit.VAE``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import scipy.linalg
import torch
from torch import nn

from .._version import __version__
from ..data import Dataset, load_dataset, parse_spec
from ..data.transforms import to_original_units
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_bytes, atomic_write_json
from ..names import QUALITY_NEIGHBOURS as DEFAULT_K

if TYPE_CHECKING:
    from ..api import VAE

DEFAULT_MEMORY_BUDGET_MB = 64.0
CLASSIFIER_FORMAT = 1  # raise when the network or its training changes, so that old caches are not reused
CLASSIFIER_JSON = "classifier.json"
CLASSIFIER_WEIGHTS = "classifier.safetensors"


# --- the Fréchet distance ------------------------------------------------------------------------------------

def _as_features(x: Any, name: str) -> np.ndarray:
    array = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
    if array.dtype.kind not in "buif":
        raise DataError(f"{name} must hold numbers, not {array.dtype}")
    array = array.astype(np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise DataError(f"{name} must be a (samples, features) array, got shape {array.shape}")
    if len(array) < 2:
        raise DataError(f"{name} holds {len(array)} sample(s); a covariance needs at least 2")
    if not np.isfinite(array).all():
        raise DataError(f"{name} holds NaN or infinite values")
    return array


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric PSD matrix (eigenvalues below zero by rounding are taken as zero)."""
    values, vectors = scipy.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """The Fréchet (2-Wasserstein squared) distance of N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    Tr (S1 S2)^(1/2) is taken as the sum of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), a
    symmetric PSD matrix with the same eigenvalues as S1 S2: no complex square roots, no ill-conditioned
    inverse, exact for singular covariances (features that never vary)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = len(mu1)
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise DataError(f"the moments do not fit together: means {mu1.shape} and {mu2.shape}, covariances "
                        f"{s1.shape} and {s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    root1 = _symmetric_sqrt(s1)
    middle = root1 @ s2 @ root1
    trace_sqrt = np.sqrt(np.clip(scipy.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
    return max(distance, 0.0)  # it is >= 0; rounding can take an exact 0 a hair below


def feature_moments(features: Any, name: str = "the features") -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, n - 1) covariance of a (samples, features) array, in float64."""
    x = _as_features(features, name)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """The Fréchet distance of two sets of feature vectors (rows): the Gaussians of their means and covariances."""
    a, b = _as_features(feats_a, "the first set"), _as_features(feats_b, "the second set")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"the sets have {a.shape[1]} and {b.shape[1]} features; they must have the same")
    return gaussian_frechet_distance(*feature_moments(a), *feature_moments(b))


# --- precision and recall ------------------------------------------------------------------------------------

class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _rows_per_chunk(columns: int, memory_budget_mb: float) -> int:
    if not (memory_budget_mb > 0 and math.isfinite(memory_budget_mb)):
        raise ConfigError(f"the memory budget must be a positive number of MiB, got {memory_budget_mb}")
    return max(1, int(memory_budget_mb * 2**20 // (3 * 8 * columns)))  # distances (float64) and their comparison


def knn_radii(points: torch.Tensor, k: int, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB) -> torch.Tensor:
    """Each point's distance to its k-th nearest neighbour among the others (the point itself left out)."""
    n = len(points)
    rows = _rows_per_chunk(n, memory_budget_mb)
    radii = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, rows):
        distances = torch.cdist(points[start:start + rows], points)
        radii[start:start + rows] = distances.kthvalue(k + 1, dim=1).values  # the 1st is the point itself
    return radii


def manifold_coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                      memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB) -> float:
    """The share of ``points`` inside at least one ball (``centres``, ``radii``)."""
    rows = _rows_per_chunk(len(centres), memory_budget_mb)
    inside = 0
    for start in range(0, len(points), rows):
        distances = torch.cdist(points[start:start + rows], centres)
        inside += int((distances <= radii[None]).any(dim=1).sum())
    return inside / len(points)


def precision_recall(real_feats: Any, fake_feats: Any, k: int = DEFAULT_K,
                     memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, *,
                     real_radii: torch.Tensor | None = None) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-nearest-neighbour manifolds.

    Precision: the share of fake samples within the k-NN radius of at least one real sample; recall: the share
    of real samples within the k-NN radius of at least one fake sample. Distances are Euclidean in float64,
    computed ``memory_budget_mb`` at a time, so 10,000 x 10,000 samples need tens of MiB, not gigabytes.
    ``real_radii``: the real samples' ``knn_radii``, when they are already known (comparing several fake sets)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a whole number of at least 1, got {k!r}")
    real = torch.from_numpy(_as_features(real_feats, "the real features"))
    fake = torch.from_numpy(_as_features(fake_feats, "the fake features"))
    if real.shape[1] != fake.shape[1]:
        raise DataError(f"the real and fake features have {real.shape[1]} and {fake.shape[1]} dimensions")
    if min(len(real), len(fake)) <= k:
        raise DataError(f"precision and recall with k={k} need more than {k} real and fake samples, got "
                        f"{len(real)} and {len(fake)}")
    if real_radii is None:
        real_radii = knn_radii(real, k, memory_budget_mb)
    elif real_radii.shape != (len(real),):
        raise DataError(f"real_radii has shape {tuple(real_radii.shape)}; it needs one radius per real sample")
    precision = manifold_coverage(fake, real, real_radii.to(torch.float64), memory_budget_mb)
    recall = manifold_coverage(real, fake, knn_radii(fake, k, memory_budget_mb), memory_budget_mb)
    return PrecisionRecall(precision, recall)


# --- the feature classifier ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassifierSettings:
    """How the feature classifier is built and trained (Adam, cross-entropy); part of its cache key. ``epochs=None``
    trains about 400 steps, at least 3 epochs and at most 30: 3 for Fashion-MNIST, 30 short ones for digits."""

    channels: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 128
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0

    def resolved(self, num_train: int) -> "ClassifierSettings":
        for name in ("feature_dim", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"the classifier's {name} must be a whole number of at least 1, got {value!r}")
        if not self.channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.channels):
            raise ConfigError(f"the classifier's channels must be positive whole numbers, got {self.channels!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"the classifier's learning rate must be a positive number, got {self.lr}")
        epochs = self.epochs
        if epochs is None:
            epochs = min(30, max(3, math.ceil(400 / math.ceil(num_train / self.batch_size))))
        elif isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"the classifier's epochs must be a whole number of at least 1, got {epochs!r}")
        return dataclasses.replace(self, channels=tuple(self.channels), epochs=epochs)


class ConvFeatureNet(nn.Module):
    """Convolutions (3x3, ReLU; stride 2 after the first, and in the first too for images of 16 pixels or more),
    an average pool to at most 4x4, a ``feature_dim`` layer (the features: its values before the ReLU) and the
    class scores."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, channels: tuple[int, ...] = (16, 32, 64),
                 feature_dim: int = 128) -> None:
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for i, out in enumerate(channels):
            stride = 2 if i > 0 or min(h, w) >= 16 else 1
            layers += [nn.Conv2d(c, out, 3, stride=stride, padding=1), nn.ReLU()]
            c, h, w = out, (h - 1) // stride + 1, (w - 1) // stride + 1
        pooled = (min(h, 4), min(w, 4))
        layers += [nn.AdaptiveAvgPool2d(pooled), nn.Flatten()]
        self.convs = nn.Sequential(*layers)
        self.feature = nn.Linear(c * pooled[0] * pooled[1], feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(self.convs(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)))


@dataclass
class FeatureClassifier:
    """The trained classifier whose penultimate layer gives the features; ``features(images)`` in the data's
    original units, shape (n, channels, height, width)."""

    net: ConvFeatureNet
    input_shape: tuple[int, int, int]
    classes: list[str]
    input_mean: float
    input_std: float
    settings: ClassifierSettings
    test_accuracy: float
    key: str
    directory: Path | None = None
    from_cache: bool = False
    train_seconds: float = 0.0

    @torch.no_grad()
    def features(self, images: Any, batch_size: int = 1024) -> np.ndarray:
        """Penultimate-layer features, float64 of shape (n, feature_dim)."""
        x = torch.as_tensor(np.asarray(images.numpy() if isinstance(images, torch.Tensor) else images),
                            dtype=torch.float32)
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataError(f"the classifier takes images of shape {self.input_shape}, got {tuple(x.shape[1:])}")
        self.net.eval()
        out = [self.net.features((x[s:s + batch_size] - self.input_mean) / self.input_std)
               for s in range(0, len(x), batch_size)]
        return torch.cat(out).double().numpy() if out else np.zeros((0, self.settings.feature_dim))

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 1024) -> np.ndarray:
        """The class index of each image (into ``classes``)."""
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        self.net.eval()
        return torch.cat([self.net((x[s:s + batch_size] - self.input_mean) / self.input_std).argmax(1)
                          for s in range(0, len(x), batch_size)]).numpy()


def cache_root() -> Path:
    """Where the quality tools keep their classifiers: ``$VAEKIT_CACHE_DIR/quality``, else
    ``$XDG_CACHE_HOME/vaekit/quality``, else ``~/.cache/vaekit/quality``."""
    if os.environ.get("VAEKIT_CACHE_DIR"):
        return Path(os.environ["VAEKIT_CACHE_DIR"]).expanduser() / "quality"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # the spec ignores relative ones
    return base / "vaekit" / "quality"


def _original_images(dataset: Dataset, which: str) -> torch.Tensor:
    """A split's images before binarization, in the data's original units (float32)."""
    x = dataset.x_train if which == "train" else dataset.x_test
    if dataset.config.standardize_mean is not None:
        return torch.from_numpy(to_original_units(x.numpy(), dataset.config))
    return x


def check_image_dataset(dataset: Dataset, purpose: str = "sample quality") -> None:
    """Refuse data the feature classifier cannot stand for: tables, vectors, unlabelled or streamed images."""
    if dataset.config.table is not None:
        raise DataError(f"{purpose} compares images; {dataset.name} is a table: use `vaekit report` (SDMetrics' "
                        "quality report) for synthetic tables")
    if not dataset.is_image:
        raise DataError(f"{purpose} compares images in the features of a classifier; {dataset.name} holds vectors "
                        f"of shape {dataset.shape}, for which there is no such classifier")
    if dataset.train_stream is not None:
        raise DataError(f"the training split of {dataset.name} is streamed from disk; the feature classifier needs "
                        "it in memory (--data-in-memory yes)")
    if dataset.y_train is None or dataset.y_test is None:
        raise DataError(f"{purpose} needs a classifier trained on the data's labels, and {dataset.name} has none; "
                        "use a labelled data set (a built-in one, or a folder of images with one subfolder per class)")
    if len(np.unique(dataset.y_train)) < 2:
        raise DataError(f"{dataset.name} has a single label; the feature classifier needs at least two classes")


def _label_indices(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Positions of ``labels`` in the sorted ``classes``; -1 for a label the classes lack."""
    labels = np.asarray(labels)
    at = np.clip(np.searchsorted(classes, labels), 0, len(classes) - 1)
    return np.where(classes[at] == labels, at, -1)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def classifier_identity(dataset: Dataset, settings: ClassifierSettings) -> dict[str, Any]:
    """What the cached classifier depends on: the data set's name, shapes and contents, and the settings."""
    x_train = _original_images(dataset, "train").numpy()
    labels = np.asarray(dataset.y_train)
    label_bytes = labels.astype(np.int64) if labels.dtype.kind in "iub" else np.array([str(v) for v in labels])
    return json.loads(json.dumps({"format": CLASSIFIER_FORMAT, "name": dataset.name, "shape": list(dataset.shape),
            "num_train": int(len(x_train)), "num_test": int(len(dataset.x_test)),
            "train_images_sha256": _digest(x_train.astype(np.float32, copy=False)), "train_labels_sha256": _digest(label_bytes),
            "test_images_sha256": _digest(_original_images(dataset, "test").numpy().astype(np.float32, copy=False)),
            "settings": dataclasses.asdict(settings)}))  # as it reads back from JSON (lists, not tuples)


def _key_of(identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(identity["name"]).name).strip("-.") or "data"
    return f"{slug[:40]}-{digest}"


def feature_classifier(dataset: Dataset, settings: ClassifierSettings | None = None, *,
                       cache_dir: str | Path | None = None, use_cache: bool = True,
                       log: Any = None) -> FeatureClassifier:
    """The feature classifier of ``dataset`` (an image data set with labels): from the cache when one was trained
    for the same data and settings, else trained now (seconds for digits, well under a minute for Fashion-MNIST on
    2 CPU cores) and stored there. ``cache_dir`` replaces ``cache_root()``; ``use_cache=False`` neither reads nor
    writes it. ``log`` (a function of one string) hears what happens."""
    check_image_dataset(dataset, "the feature classifier")
    settings = (settings or ClassifierSettings()).resolved(len(dataset.x_train))
    identity = classifier_identity(dataset, settings)
    key = _key_of(identity)
    directory = (Path(cache_dir).expanduser() if cache_dir is not None else cache_root()) / key
    if use_cache:
        cached = _load_classifier(directory, identity, key)
        if cached is not None:
            if log:
                log(f"feature classifier from the cache: {directory}")
            return cached
    if log:
        log(f"training the feature classifier on {dataset.name} ({len(dataset.x_train):,} images, "
            f"{settings.epochs} epochs)")
    classifier = _train_classifier(dataset, settings, key)
    if use_cache:
        try:
            _save_classifier(directory, classifier, identity)
            classifier.directory = directory
        except OSError as err:
            warnings.warn(f"could not keep the feature classifier in {directory} ({err}); it is trained again next "
                          "time", stacklevel=2)
    return classifier


def _train_classifier(dataset: Dataset, settings: ClassifierSettings, key: str) -> FeatureClassifier:
    """Train on one thread: the same weights whatever the machine's thread count (the cache key has none), and
    faster for a network this small, whose steps are too short to repay a thread pool; on a busy 2-core machine
    two threads took 2.4 times longer for Fashion-MNIST and 8 times longer for digits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_classifier_here(dataset, settings, key)
    finally:
        torch.set_num_threads(threads)


def _train_classifier_here(dataset: Dataset, settings: ClassifierSettings, key: str) -> FeatureClassifier:
    start = time.perf_counter()
    x_train, x_test = _original_images(dataset, "train"), _original_images(dataset, "test")
    classes = np.unique(np.asarray(dataset.y_train))
    y_train = torch.from_numpy(_label_indices(dataset.y_train, classes))
    mean = float(x_train.double().mean())
    std = float(x_train.double().std()) or 1.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        net = ConvFeatureNet(tuple(dataset.shape), len(classes), settings.channels, settings.feature_dim)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    inputs = (x_train - mean) / std
    net.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for s in range(0, len(order), settings.batch_size):
            batch = order[s:s + settings.batch_size]
            loss = nn.functional.cross_entropy(net(inputs[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()
    classifier = FeatureClassifier(net=net, input_shape=tuple(dataset.shape), classes=[str(c) for c in classes],
                                   input_mean=mean, input_std=std, settings=settings, test_accuracy=float("nan"),
                                   key=key)
    y_test = _label_indices(dataset.y_test, classes)
    classifier.test_accuracy = float((classifier.predict(x_test) == y_test).mean())
    classifier.train_seconds = time.perf_counter() - start
    return classifier


def _save_classifier(directory: Path, classifier: FeatureClassifier, identity: dict[str, Any]) -> None:
    from safetensors.torch import save

    state = {name: t.detach().contiguous().clone() for name, t in classifier.net.state_dict().items()}
    atomic_write_bytes(directory / CLASSIFIER_WEIGHTS, save(state))
    atomic_write_json(directory / CLASSIFIER_JSON, {  # written last: its presence marks a complete entry
        "key": classifier.key, "identity": identity, "classes": classifier.classes,
        "input_shape": list(classifier.input_shape), "input_mean": classifier.input_mean,
        "input_std": classifier.input_std, "test_accuracy": classifier.test_accuracy,
        "train_seconds": classifier.train_seconds, "vaekit_version": __version__})


def _load_classifier(directory: Path, identity: dict[str, Any], key: str) -> FeatureClassifier | None:
    """The classifier cached in ``directory`` if it is complete and was trained for ``identity``, else ``None``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta_path, weights_path = directory / CLASSIFIER_JSON, directory / CLASSIFIER_WEIGHTS
    if not (meta_path.is_file() and weights_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("identity") != identity:
            return None
        settings = ClassifierSettings(**{**identity["settings"], "channels": tuple(identity["settings"]["channels"])})
        net = ConvFeatureNet(tuple(meta["input_shape"]), len(meta["classes"]), settings.channels, settings.feature_dim)
        net.load_state_dict(load(weights_path.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        warnings.warn(f"the cached feature classifier in {directory} cannot be read ({err}); training it again",
                      stacklevel=3)
        return None
    return FeatureClassifier(net=net.eval(), input_shape=tuple(meta["input_shape"]), classes=list(meta["classes"]),
                             input_mean=float(meta["input_mean"]), input_std=float(meta["input_std"]),
                             settings=settings, test_accuracy=float(meta["test_accuracy"]), key=key,
                             directory=directory, from_cache=True, train_seconds=float(meta.get("train_seconds", 0)))


# --- a run's samples -----------------------------------------------------------------------------------------

@dataclass
class SampleQuality:
    """Sample quality of a run against a data set's test split, in the feature classifier's features.

    ``fd``, ``precision``, ``recall``: N samples vs the test split. ``floor_*``: N training images (a seeded
    random choice; all of them when there are fewer: ``num_floor``) vs the test split, what a model that
    reproduces the data distribution would get at this N."""

    fd: float
    precision: float
    recall: float
    floor_fd: float
    floor_precision: float
    floor_recall: float
    classifier_test_accuracy: float
    num_samples: int
    num_test: int
    num_floor: int
    k: int
    seed: int
    data: str
    sampler: str = "prior"
    draw: bool = False  # samples drawn from p(x|z), not its means
    feature_dim: int = 0
    classifier_key: str = ""
    classifier_from_cache: bool = False
    classifier_settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    # A conditional run: its samples are drawn for labels in the test split's proportions, and this is the share
    # the classifier assigns to the label they were drawn for (overall and per label).
    conditional_accuracy: float | None = None
    per_label_accuracy: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare_samples(samples: Any, dataset: Dataset, classifier: FeatureClassifier, *, k: int = DEFAULT_K,
                    seed: int = 0, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
                    sampler: str = "prior", draw: bool = False) -> SampleQuality:
    """FD, precision and recall of ``samples`` (images in the data's original units) against ``dataset``'s test
    split, and of as many training images (seeded choice) against it: the floor."""
    start = time.perf_counter()
    check_image_dataset(dataset)
    x = _check_samples(samples, dataset)
    n = len(x)
    train = _original_images(dataset, "train")
    chosen = np.sort(np.random.default_rng(seed).choice(len(train), size=min(n, len(train)), replace=False))
    test_feats = classifier.features(_original_images(dataset, "test"))
    fake_feats = classifier.features(x)
    floor_feats = classifier.features(train[torch.from_numpy(chosen)])
    radii = knn_radii(torch.from_numpy(test_feats), k, memory_budget_mb) if len(test_feats) > k else None
    pr = precision_recall(test_feats, fake_feats, k, memory_budget_mb, real_radii=radii)
    floor_pr = precision_recall(test_feats, floor_feats, k, memory_budget_mb, real_radii=radii)
    return SampleQuality(
        fd=frechet_distance(fake_feats, test_feats), precision=pr.precision, recall=pr.recall,
        floor_fd=frechet_distance(floor_feats, test_feats), floor_precision=floor_pr.precision,
        floor_recall=floor_pr.recall, classifier_test_accuracy=classifier.test_accuracy, num_samples=n,
        num_test=len(test_feats), num_floor=len(chosen), k=int(k), seed=int(seed), data=dataset.name, sampler=sampler, draw=bool(draw),
        feature_dim=classifier.settings.feature_dim, classifier_key=classifier.key,
        classifier_from_cache=classifier.from_cache, classifier_settings=dataclasses.asdict(classifier.settings),
        seconds=time.perf_counter() - start)


def _check_samples(samples: Any, dataset: Dataset) -> np.ndarray:
    """Samples as float32 images of the data's shape, refused when they are not in the data's units."""
    x = np.asarray(samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else samples)
    if x.dtype.kind not in "buif":
        raise DataError(f"the samples must be images (numbers), not {x.dtype}")
    shape = dataset.shape
    if x.ndim == 3 and shape[0] == 1 and x.shape[1:] == shape[1:]:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != shape:
        raise DataError(f"the samples have shape {x.shape[1:]} but {dataset.name}'s images have shape {shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError("the samples hold NaN or infinite values")
    train = _original_images(dataset, "train")
    low, high = float(train.min()), float(train.max())
    margin = 0.5 * max(high - low, 1e-6)
    if x.min() < low - margin or x.max() > high + margin:
        raise DataError(f"the samples range over [{x.min():.3g}, {x.max():.3g}] but {dataset.name}'s images over "
                        f"[{low:.3g}, {high:.3g}]; pass samples in the data's original units")
    return x


def _dataset_for(vae: "VAE", data: Dataset | str | None, data_dir: str | None) -> Dataset:
    if isinstance(data, Dataset):
        return data
    spec = data if data is not None else vae.config_.data.source
    if spec == "array":
        raise DataError("the run was trained on an in-memory array; pass the data set (a Dataset or its name)")
    source, split = parse_spec(spec)
    if split not in (None, "test"):
        raise DataError(f"{spec}: sample quality trains its classifier on the training split and compares with "
                        f"the test split; name the data set without :{split}")
    return load_dataset(source, data_dir=data_dir, like=vae.config_.data)


def sample_quality(vae: "VAE", data: Dataset | str | None = None, *, num_samples: int | None = None, seed: int = 0,
                   k: int = DEFAULT_K, sampler: Any = "prior", draw: bool = False,
                   classifier: FeatureClassifier | None = None,
                   classifier_settings: ClassifierSettings | None = None, cache_dir: str | Path | None = None,
                   data_dir: str | None = None, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
                   log: Any = None) -> SampleQuality:
    """FD, precision and recall of ``num_samples`` samples of a trained run (``vae.sample(n, seed=seed)``)
    against the test split of ``data`` (a ``Dataset``, a data set's name, or ``None``: the run's own), in the
    features of its cached classifier, with the floor of as many training images. ``num_samples`` defaults to
    the test split's size. ``sampler`` is passed on to ``vae.sample``: "prior", a fitted sampler's name ("gmm",
    after ``vaekit.generation.load_sampler(RUN, vae)``) or a sampler object. ``draw``: compare draws x ~ p(x|z)
    instead of the means of p(x|z) (what ``vae.sample`` gives images by default: smooth, often blurry)."""
    if getattr(vae, "schema_", None) is not None:
        raise DataError("the run was trained on a table; sample quality compares images: use `vaekit report` "
                        "(SDMetrics' quality report) for synthetic tables")
    dataset = _dataset_for(vae, data, data_dir)
    check_image_dataset(dataset)
    if tuple(getattr(vae, "input_shape_", dataset.shape)) != dataset.shape:
        raise DataError(f"the run makes images of shape {tuple(vae.input_shape_)} but {dataset.name}'s have "
                        f"shape {dataset.shape}")
    n = len(dataset.x_test) if num_samples is None else num_samples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= k:
        raise ConfigError(f"the number of samples must be a whole number above k={k}, got {n!r}")
    if classifier is None:
        classifier = feature_classifier(dataset, classifier_settings, cache_dir=cache_dir, log=log)
    start = time.perf_counter()
    labels = _conditional_labels(vae, dataset, int(n), seed)
    samples = vae.sample(int(n), y=labels, seed=seed, sampler=sampler, sample_output=True if draw else None)
    name = sampler if isinstance(sampler, str) else getattr(sampler, "kind", type(sampler).__name__)
    result = compare_samples(samples, dataset, classifier, k=k, seed=seed, memory_budget_mb=memory_budget_mb,
                             sampler=name, draw=draw)
    if labels is not None:
        result.conditional_accuracy, result.per_label_accuracy = conditional_accuracy(
            vae, dataset, classifier, samples, labels)
    result.seconds = time.perf_counter() - start
    return result


def _conditional_labels(vae: "VAE", dataset: Dataset, n: int, seed: int) -> np.ndarray | None:
    """For a conditional run, n labels (indices into its classes) in the test split's proportions: a draw of the
    test labels, so that the samples are compared with a test set of the same class mix."""
    model = getattr(vae, "model_", None)
    if model is None or not model.conditional:
        return None
    from ..data.labels import label_indices

    test = label_indices(dataset.labels("test"), list(vae.classes_), dataset.class_names)
    return np.sort(np.random.default_rng(seed).choice(test, size=n, replace=True))


def conditional_accuracy(vae: "VAE", dataset: Dataset, classifier: FeatureClassifier, samples: Any,
                         labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """The share of a conditional run's ``samples`` that the data set's classifier assigns to the label each was
    drawn for (``labels``: indices into the run's classes), overall and per label."""
    from ..data.labels import label_indices

    raw = np.unique(np.asarray(dataset.y_train))  # the classifier's classes, as the data set's own label values
    predicted = label_indices(raw[classifier.predict(samples)], list(vae.classes_), dataset.class_names)
    hit = predicted == np.asarray(labels)
    per_label = {str(vae.classes_[c]): float(hit[labels == c].mean()) for c in np.unique(labels)}
    return float(hit.mean()), per_label
