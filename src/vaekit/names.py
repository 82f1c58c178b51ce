"""Names and defaults that the command line's parsers offer, in a module that imports nothing (no PyTorch, no numpy).

``vaekit --help``, ``vaekit --version`` and argument errors build every parser but run no command, so they must not
wait seconds for PyTorch. Each constant is defined here once; the module that uses it (the samplers, the anomaly
scores, ...) imports it from here, and so does its ``vaekit.cli`` command. ``tests/test_startup.py`` checks that the
command line starts without importing torch.
"""

from __future__ import annotations

# vaekit.data.streaming: holding the data in memory or streaming it from disk
IN_MEMORY_CHOICES = ("auto", "yes", "no")
DEFAULT_LOADER_WORKERS = 2

# vaekit.evaluation.likelihood
LIKELIHOOD_MEMORY_BUDGET_MB = 256
"""Working memory of one chunk of the importance-weighted estimate."""

# vaekit.evaluation.sample_quality
QUALITY_NEIGHBOURS = 3
"""The k of the k-NN manifolds of precision and recall (Kynkäänniemi et al. 2019)."""

# vaekit.generation.samplers
SAMPLER_NAMES = ("prior", "gmm")
"""The samplers of latent codes by name (``vaekit.generation.samplers.SAMPLERS`` maps them to their classes)."""
FITTED_KINDS = ("gmm",)
"""The samplers that are fitted and saved with a run."""
SAMPLER_MAX_COMPONENTS = 20
SAMPLER_SOURCES = ("mean", "draw")

# vaekit.generation.latent
INTERPOLATION_METHODS = ("linear", "spherical")
RANKINGS = ("kl", "variance")
EMBEDDINGS = ("auto", "latent", "pca", "tsne")

# vaekit.anomaly.scores
SCORE_DESCRIPTIONS = {
    "neg_elbo": "negative ELBO, nats (one posterior sample)",
    "neg_log_likelihood": "importance-weighted -log p(x), nats",
    "reconstruction_error": "mean squared error of the reconstruction from the latent mean",
    "input_complexity": "-log2 p(x) minus the compressed size of x, bits (Serra et al. 2020)",
    "likelihood_ratio": "-log p(x) + log p_background(x), nats (Ren et al. 2019)",
    "likelihood_regret": "nats gained by fine-tuning the encoder on the example alone (Xiao et al. 2020); slow",
    "posterior_regret": "nats gained by optimizing the example's posterior directly (the amortization gap)",
    "typicality": "-log density of the model's statistics under their distribution on clean data (DoSE, Morningstar et al. 2021)",
    "llr": "ELBO minus the bound with the k lowest latent layers from the prior, nats (Havtorn et al. 2021); 2+ layers",
}
SCORE_NAMES = tuple(SCORE_DESCRIPTIONS)
DEFAULT_SCORE = "typicality"
COMPRESSORS = ("png", "zlib")
DETECTOR_FILE = "anomaly_detector.json"
BACKGROUND_DIR = "background"
"""Where a detector's background model (for likelihood_ratio) is saved, inside the main run directory."""

# vaekit.export
EXPORT_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pt2": "torch.export"}

# vaekit.serve.security
TOKEN_ENV = "VAEKIT_TOKEN"
