"""A calibrated anomaly detector with scikit-learn's conventions, saved beside the model.

``AnomalyDetector`` scores clean data with one of ``scores.SCORE_NAMES`` (by default ``typicality``),
sets a threshold (a false-positive rate with a split-conformal guarantee, or PyOD's contamination
rule) and writes ``anomaly_detector.json`` (plus ``typicality.json`` and a background model where the
score needs them) into the run directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin

from .._version import __version__
from ..api import VAE, load
from ..config import dataclass_from_dict
from ..errors import CalibrationSizeError, CheckpointError, ConfigError, DataError
from ..fileio import atomic_write_json, read_json
from .scores import (BACKGROUND_DIR, COMPRESSORS, DEFAULT_SCORE, DETECTOR_FILE, DETECTOR_FORMAT_VERSION, SCORE_NAMES,
                     anomaly_scores, default_score, model_fingerprint, model_units, prepare_inputs)
from .typicality import TypicalityModel, fit_typicality, load_typicality, save_typicality


# --- thresholds ----------------------------------------------------------------------------------

def threshold_for_contamination(scores: np.ndarray, contamination: float) -> float:
    """The score above which a fraction ``contamination`` of ``scores`` lies (PyOD's rule)."""
    if not 0.0 < contamination <= 0.5:
        raise ConfigError(f"contamination must lie in (0, 0.5], got {contamination}")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - contamination))


def threshold_for_false_positive_rate(clean_scores: np.ndarray, target_fpr: float) -> float:
    """A threshold that flags at most a fraction ``target_fpr`` of new clean data, in expectation.

    The split-conformal quantile: the k-th smallest of n clean scores with k = ceil((n + 1)(1 - target_fpr)).
    For a new example exchangeable with the clean ones, P(score > threshold) <= target_fpr (Vovk et al. 2005).
    """
    if not 0.0 < target_fpr < 1.0:
        raise ConfigError(f"the target false-positive rate must lie strictly between 0 and 1, got {target_fpr}")
    s = np.sort(np.asarray(clean_scores, dtype=np.float64))
    n = len(s)
    k = math.ceil((n + 1) * (1.0 - target_fpr))
    if k > n:
        needed = math.ceil(1.0 / target_fpr) - 1
        raise CalibrationSizeError(f"{n} clean examples are too few to guarantee a false-positive rate of {target_fpr}: "
                                   f"it needs at least {needed}", examples=n, needed=needed)
    return float(s[k - 1])


# --- the detector --------------------------------------------------------------------------------

@dataclass
class DetectorState:
    """What a fitted detector saves beside the model (``anomaly_detector.json``)."""

    score: str
    threshold: float
    rule: str                    # "contamination" or "target_fpr"
    rate: float
    num_importance_samples: int
    compressor: str
    seed: int
    calibration_size: int
    model_fingerprint: str
    background_fingerprint: str | None = None  # set when the run holds a background model in BACKGROUND_DIR
    typicality_digest: str | None = None  # SHA-256 of the typicality model the threshold was set for (typicality.json)


class AnomalyDetector(OutlierMixin, BaseEstimator):
    """A VAE-based outlier detector with scikit-learn's conventions.

    ``vae`` is a fitted ``VAE`` or a run directory (an unfitted ``VAE`` is trained on ``X`` in ``fit``).
    ``fit(X)`` scores ``X`` and sets ``threshold_``: with ``target_fpr`` (the default, 0.05) ``X`` should be
    clean data and the threshold flags at most that fraction of new clean data; with ``contamination``
    the threshold flags that fraction of ``X`` itself (PyOD's rule).

    Sign conventions, as in scikit-learn's ``IsolationForest``:

    - ``anomaly_score(X)``: the chosen score, **higher = more anomalous** (the ``score`` column of ``vaekit score``)
    - ``score_samples(X)`` = -anomaly_score: **higher = more normal**
    - ``decision_function(X)`` = threshold_ - anomaly_score: **negative = anomaly**
    - ``predict(X)``: **-1 for anomalies, +1 for normal examples**

    PyOD's ``decision_function`` is higher-for-anomalous; use ``anomaly_score`` for that direction.
    """

    def __init__(self, vae: VAE | str | Path, score: str | None = None, *, target_fpr: float | None = None,
                 contamination: float | None = None, num_importance_samples: int = 100, compressor: str = "png",
                 seed: int = 0, background: VAE | str | Path | None = None,
                 typicality: TypicalityModel | None = None) -> None:
        self.vae = vae
        self.typicality = typicality
        self.score = score
        self.target_fpr = target_fpr
        self.contamination = contamination
        self.num_importance_samples = num_importance_samples
        self.compressor = compressor
        self.seed = seed
        self.background = background

    def fit(self, X: Any, y: Any = None) -> "AnomalyDetector":
        """Score ``X`` and set the threshold (training the VAE on ``X`` first if it is not fitted).

        When ``X`` holds exactly the rows the VAE was fitted on (``VAE.training_rows_``: the same data in the same
        order, as in ``AnomalyDetector(VAE()).fit(X)``), the rows the weights were trained on fit the typicality
        density (as ``vaekit train`` fits it on the training split) and the threshold is set on the rows that fit
        held out: rows the model has not seen, like the new data it will score. Rows it was trained on score lower
        than new clean rows, so a threshold set on them flags far more than the target rate of new clean data.
        Other data (new clean examples) is split in two seeded halves: one fits the density, the other sets the
        threshold."""
        if self.target_fpr is not None and self.contamination is not None:
            raise ConfigError("give either target_fpr or contamination, not both")
        self._resolve_models(train_on=X)
        known = getattr(self.vae_, "training_rows_", None)
        known = known if known is not None and known.matches(X) else None
        fit_density = self.score_ == "typicality" and self.typicality_ is None
        x = prepare_inputs(self.vae_, X, seed=self.seed) if known is not None or fit_density else None
        calibration = X if known is None else x[known.held_out]
        if fit_density:
            # No typicality model yet: fit it on the training rows (or a seeded half of X); calibrate on the rest.
            if known is not None:
                fit_part, rest = known.train, calibration
            else:
                order = np.random.default_rng(self.seed).permutation(len(x))
                fit_part, rest = np.sort(order[: len(x) // 2]), x[np.sort(order[len(x) // 2:])]
            try:
                self.typicality_ = fit_typicality(self.vae_, model_units(self.vae_, x[fit_part]), seed=self.seed)
                calibration = rest
            except DataError as err:
                if self.score is not None:  # asked for by name: say why it cannot be had
                    raise
                self.score_ = default_score(self.vae_)
                warnings.warn(f"the default score typicality cannot be fitted on these data ({err}); "
                              f"using {self.score_} instead", stacklevel=2)
        if self.contamination is not None:
            # PyOD's rule: the fraction of X itself (all of it, the rows the model was trained on included)
            rule, rate = "contamination", self.contamination
            scores = self.anomaly_score(X if known is not None else calibration)
            threshold = threshold_for_contamination(scores, rate)
        else:
            rule, rate = "target_fpr", 0.05 if self.target_fpr is None else self.target_fpr
            scores = self.anomaly_score(calibration)
            try:
                threshold = threshold_for_false_positive_rate(scores, rate)
            except CalibrationSizeError as err:
                if known is None:
                    raise
                threshold = float(np.max(scores))
                warnings.warn(f"the VAE held out {len(scores)} of these rows, too few to guarantee a false-positive "
                              f"rate of {rate} (that needs {err.needed}); the threshold is the largest "
                              f"of their scores, which a new clean row exceeds with probability about "
                              f"1/{len(scores) + 1} = {1 / (len(scores) + 1):.0%}. Fit the detector on new clean "
                              f"data for a guaranteed rate", stacklevel=2)
        self.threshold_ = threshold
        self.offset_ = -threshold  # scikit-learn: decision_function = score_samples - offset_
        self.rule_, self.rate_ = rule, rate
        self.calibration_scores_ = scores
        return self

    def _resolve_models(self, train_on: Any = None) -> None:
        if isinstance(self.vae, (str, Path)):
            self.vae_, self.run_dir_ = load(self.vae), Path(self.vae)
        else:
            self.vae_, self.run_dir_ = self.vae, None
            if not hasattr(self.vae_, "model_"):
                if train_on is None:
                    raise ConfigError("the VAE is not fitted; fit the detector on data first")
                self.vae_.fit(train_on)
        if self.background is None:
            self.background_ = None
        else:
            self.background_ = load(self.background) if isinstance(self.background, (str, Path)) else self.background
        self.typicality_ = self.typicality
        if self.typicality_ is None and self.run_dir_ is not None:
            self.typicality_ = load_typicality(self.run_dir_, self.vae_)
        if self.score:
            self.score_ = self.score
        elif self.typicality_ is not None or train_on is not None:
            self.score_ = DEFAULT_SCORE  # without a typicality model, fit() fits one on part of its data
        else:
            self.score_ = default_score(self.vae_)
        if self.score_ not in SCORE_NAMES:
            raise ConfigError(f"unknown score {self.score_!r}; choose from {', '.join(SCORE_NAMES)}")
        if self.compressor not in COMPRESSORS:
            raise ConfigError(f"compressor must be one of {', '.join(COMPRESSORS)}, got {self.compressor!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "vae_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this AnomalyDetector is not fitted yet; call fit(clean_data) or AnomalyDetector.load(run)")

    def anomaly_score(self, X: Any) -> np.ndarray:
        """The detector's score of every example: higher = more anomalous."""
        if not hasattr(self, "vae_"):
            self._resolve_models()
        return anomaly_scores(self.vae_, X, [self.score_], num_importance_samples=self.num_importance_samples,
                              compressor=self.compressor, seed=self.seed, background=self.background_,
                              typicality=self.typicality_)[self.score_]

    def score_samples(self, X: Any) -> np.ndarray:
        """Negated anomaly score: higher = more normal (scikit-learn's convention)."""
        return -self.anomaly_score(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """threshold_ - anomaly score: negative for anomalies, positive for normal examples."""
        self._check_fitted_threshold()
        return self.threshold_ - self.anomaly_score(X)

    def predict(self, X: Any) -> np.ndarray:
        """-1 for anomalies (score above the threshold), +1 for normal examples."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def _check_fitted_threshold(self) -> None:
        if not hasattr(self, "threshold_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this AnomalyDetector has no threshold yet; call fit(clean_data) first")

    # --- persistence -------------------------------------------------------------------------
    def state(self) -> DetectorState:
        self._check_fitted_threshold()
        return DetectorState(score=self.score_, threshold=float(self.threshold_), rule=self.rule_,
                             rate=float(self.rate_), num_importance_samples=int(self.num_importance_samples),
                             compressor=self.compressor, seed=int(self.seed),
                             calibration_size=int(len(self.calibration_scores_)),
                             model_fingerprint=model_fingerprint(self.vae_),
                             background_fingerprint=(model_fingerprint(self.background_)
                                                     if self.background_ is not None else None),
                             typicality_digest=(typicality_digest(self.typicality_)
                                                if self.score_ == "typicality" else None))

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Write ``anomaly_detector.json`` into the run directory (atomically); returns its path.

        A detector whose VAE came from memory writes the VAE into ``run_dir`` as well when it has none; a
        background model (``likelihood_ratio``) is written into ``run_dir/background``, so that the run
        directory holds everything the detector needs.
        """
        state = self.state()
        target = Path(run_dir) if run_dir is not None else self.run_dir_
        if target is None:
            raise ConfigError("name the run directory to save the detector in")
        if not (target / "config.json").is_file():
            self.vae_.save(target)
        if self.background_ is not None:
            self.background_.save(target / BACKGROUND_DIR)
        if state.typicality_digest is not None:
            save_typicality(self.typicality_, target)
        path = target / DETECTOR_FILE
        atomic_write_json(path, {"format_version": DETECTOR_FORMAT_VERSION, "vaekit_version": __version__,
                                 "detector": asdict(state)})
        return path

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "AnomalyDetector":
        """The detector saved in a run directory, with its VAE; refuses one calibrated for other weights."""
        vae = load(run_dir, device=device)
        state = read_detector_state(run_dir)
        if state.model_fingerprint != model_fingerprint(vae):
            raise CheckpointError(f"{Path(run_dir) / DETECTOR_FILE} was calibrated for other weights than the run's "
                                  "model.safetensors; fit the detector again (vaekit fit-detector)")
        kwargs = {"target_fpr": state.rate} if state.rule == "target_fpr" else {"contamination": state.rate}
        typicality = None
        if state.typicality_digest is not None:
            typicality = load_typicality(run_dir, vae)
            if typicality is None or typicality_digest(typicality) != state.typicality_digest:
                raise CheckpointError(f"the anomaly detector in {run_dir} was calibrated with another typicality model "
                                      "than its typicality.json; fit the detector again (vaekit fit-detector)")
        detector = cls(vae, score=state.score, num_importance_samples=state.num_importance_samples,
                       compressor=state.compressor, seed=state.seed,
                       background=load_background(run_dir, state, device=device), typicality=typicality, **kwargs)
        detector._resolve_models()
        detector.run_dir_ = Path(run_dir)
        detector.threshold_, detector.offset_ = state.threshold, -state.threshold
        detector.rule_, detector.rate_ = state.rule, state.rate
        detector.calibration_scores_ = np.full(state.calibration_size, np.nan)  # sizes only; scores are not saved
        return detector


def load_background(run_dir: str | Path, state: DetectorState, device: str = "cpu") -> VAE | None:
    """The background model saved with a detector (``None`` when it has none), checked against its fingerprint."""
    if state.background_fingerprint is None:
        return None
    where = Path(run_dir) / BACKGROUND_DIR
    try:
        background = load(where, device=device)
    except (CheckpointError, ConfigError, DataError) as err:
        raise CheckpointError(f"the anomaly detector in {run_dir} needs its background model in {where}: {err}") from None
    if model_fingerprint(background) != state.background_fingerprint:
        raise CheckpointError(f"{where} holds other weights than the background model the detector in {run_dir} was "
                              "calibrated with; fit the detector again (vaekit fit-detector --background)")
    return background


def read_detector_state(run_dir: str | Path) -> DetectorState:
    """Read and validate ``anomaly_detector.json`` (plain JSON, every field checked; nothing is executed)."""
    path = Path(run_dir) / DETECTOR_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no anomaly detector ({DETECTOR_FILE}); create one with vaekit fit-detector")
    raw = read_json(path)
    try:
        if not isinstance(raw, dict) or raw.get("format_version") != DETECTOR_FORMAT_VERSION:
            raise ConfigError(f"format_version must be {DETECTOR_FORMAT_VERSION}")
        state = dataclass_from_dict(DetectorState, raw.get("detector"), "detector")
        if state.score not in SCORE_NAMES:
            raise ConfigError(f"unknown score {state.score!r}")
        if state.rule not in ("contamination", "target_fpr") or not 0 < state.rate < 1:
            raise ConfigError(f"rule {state.rule!r} with rate {state.rate} is not valid")
        if state.compressor not in COMPRESSORS or state.num_importance_samples < 1:
            raise ConfigError("compressor or num_importance_samples is not valid")
    except ConfigError as err:
        raise CheckpointError(f"{path} is not a valid vaekit anomaly detector: {err}") from None
    return state


def typicality_digest(state: TypicalityModel) -> str:
    """SHA-256 of a typicality model's parameters: ties a detector's threshold to the density it was set with."""
    return hashlib.sha256(json.dumps(asdict(state), sort_keys=True).encode()).hexdigest()
