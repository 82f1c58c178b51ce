"""Anomaly and out-of-distribution detection with a trained VAE.

``scores``: per-example anomaly scores (higher = more anomalous), their AUROC/AUPRC, thresholds and the
``AnomalyDetector`` (scikit-learn conventions, saved as ``anomaly_detector.json`` in the run directory).
``typicality``: the default score, the density of the model's own statistics on clean data (DoSE).
Works on a fitted ``vaekit.VAE``.
"""

from .scores import (BACKGROUND_DIR, COMPRESSORS, DEFAULT_SCORE, DETECTOR_FILE, FALLBACK_SCORE, SCORE_DESCRIPTIONS,
                     SCORE_NAMES, AnomalyDetector, DetectorState, anomaly_scores, available_scores, complexity_problem,
                     compress_image, compressed_bits, default_score, detection_metrics, is_image_model,
                     load_background, model_bits, model_fingerprint, perturb, prepare_inputs, read_detector_state,
                     roc_figure, threshold_for_contamination, threshold_for_false_positive_rate)
from .typicality import TypicalityModel, fit_typicality, load_typicality, model_statistics, save_typicality

__all__ = ["AnomalyDetector", "DetectorState", "anomaly_scores", "available_scores", "default_score",
           "detection_metrics", "roc_figure", "threshold_for_contamination", "threshold_for_false_positive_rate",
           "perturb", "prepare_inputs", "compressed_bits", "compress_image", "model_bits", "complexity_problem",
           "is_image_model", "read_detector_state", "load_background", "model_fingerprint", "SCORE_NAMES",
           "SCORE_DESCRIPTIONS", "DEFAULT_SCORE", "FALLBACK_SCORE", "COMPRESSORS", "DETECTOR_FILE", "BACKGROUND_DIR",
           "TypicalityModel", "fit_typicality", "load_typicality", "save_typicality", "model_statistics"]
