"""How good a trained model is: the ELBO, importance-weighted log-likelihood (Burda et al. 2016),
bits per dimension and active units, as papers report them (``vaekit eval``); and how good its samples are:
the Fréchet distance, precision and recall in a classifier's features (``sample_quality``, ``vaekit quality``).

Works on a ``VAEModel`` and tensors; depends on ``vaekit.models`` only.
"""

from .likelihood import ElboResult, Evaluation, active_units, elbo, evaluate, log_likelihood
from . import sample_quality  # the module: sample_quality.sample_quality(vae, data) is its entry point
from .sample_quality import (ClassifierSettings, FeatureClassifier, SampleQuality, feature_classifier,
                             frechet_distance, gaussian_frechet_distance, precision_recall)

__all__ = ["evaluate", "log_likelihood", "elbo", "active_units", "Evaluation", "ElboResult",
           "sample_quality", "frechet_distance", "gaussian_frechet_distance", "precision_recall",
           "feature_classifier", "ClassifierSettings", "FeatureClassifier", "SampleQuality"]
