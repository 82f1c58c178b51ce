"""Anomaly and out-of-distribution detection with a trained VAE.

``scores``: per-example anomaly scores (higher = more anomalous) and their AUROC/AUPRC; ``detector``:
thresholds and the ``AnomalyDetector`` (scikit-learn conventions, saved as ``anomaly_detector.json``).
``typicality``: the default score, the density of the model's own statistics on clean data (DoSE).
``regret``: likelihood regret and the amortization gap, batched. ``hierarchical``: the bounds L^{>k} and
LLR^{>k} of hierarchical models (Havtorn et al. 2021). ``explain``: per-feature attribution.
Works on a fitted ``vaekit.VAE``.
"""

from .detector import (AnomalyDetector, DetectorState, load_background, read_detector_state,
                       threshold_for_contamination, threshold_for_false_positive_rate, typicality_digest)
from .scores import (BACKGROUND_DIR, COMPRESSORS, DEFAULT_SCORE, DETECTOR_FILE, FALLBACK_SCORE, SCORE_DESCRIPTIONS,
                     SCORE_NAMES, anomaly_scores, available_scores, complexity_problem, compress_image, compressed_bits,
                     default_score, detection_metrics, is_image_model, model_bits, model_fingerprint, model_units,
                     perturb, prepare_inputs, roc_figure)
from .hierarchical import bound_above, llr_above
from .explain import explanation_figure, feature_contributions, top_features, write_explanations
from .regret import likelihood_regret, posterior_regret
from .typicality import TypicalityModel, fit_typicality, load_typicality, model_statistics, save_typicality

__all__ = ["AnomalyDetector", "DetectorState", "anomaly_scores", "available_scores", "default_score",
           "detection_metrics", "roc_figure", "threshold_for_contamination", "threshold_for_false_positive_rate",
           "perturb", "prepare_inputs", "compressed_bits", "compress_image", "model_bits", "complexity_problem",
           "is_image_model", "read_detector_state", "load_background", "model_fingerprint", "SCORE_NAMES",
           "SCORE_DESCRIPTIONS", "DEFAULT_SCORE", "FALLBACK_SCORE", "COMPRESSORS", "DETECTOR_FILE", "BACKGROUND_DIR",
           "feature_contributions", "top_features", "explanation_figure", "write_explanations",
           "likelihood_regret", "posterior_regret", "bound_above", "llr_above", "TypicalityModel", "fit_typicality", "typicality_digest", "model_units", "load_typicality", "save_typicality", "model_statistics"]
