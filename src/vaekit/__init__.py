"""vaekit: variational autoencoders on your own data.

    >>> import vaekit
    >>> data = vaekit.load_dataset("digits")
    >>> vae = vaekit.VAE(latent_dim=8, epochs=5).fit(data)
    >>> images = vae.sample(16)
"""

from ._version import __version__  # noqa: E402

from .api import VAE, load  # noqa: E402
from .data import Dataset, load_dataset  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, TrainingError, VaekitError  # noqa: E402

__all__ = ["VAE", "load", "Dataset", "load_dataset", "VaekitError", "DataError", "ConfigError",
           "CheckpointError", "TrainingError", "__version__"]

# Names that earlier releases documented as modules of the top level, now packages of their own:
# ``vaekit.evaluate.log_likelihood(...)`` and ``from vaekit import latent`` keep working.
_ALIASES = {"evaluate": "vaekit.evaluation", "latent": "vaekit.generation.latent"}


def __getattr__(name: str):
    import importlib

    if name in _ALIASES:
        return importlib.import_module(_ALIASES[name])
    if name in ("anomaly", "evaluation", "generation", "models", "training", "export", "plots"):
        return importlib.import_module(f"vaekit.{name}")
    raise AttributeError(f"module 'vaekit' has no attribute {name!r}")
