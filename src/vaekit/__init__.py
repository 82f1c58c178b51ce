"""vaekit: variational autoencoders on your own data.

    >>> import vaekit
    >>> data = vaekit.load_dataset("digits")
    >>> vae = vaekit.VAE(latent_dim=8, epochs=5).fit(data)
    >>> images = vae.sample(16)
"""

from typing import TYPE_CHECKING

from ._version import __version__  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, TrainingError, VaekitError  # noqa: E402

if TYPE_CHECKING:  # for type checkers and the API reference (mkdocstrings reads the source): the same names
    from .api import VAE, load
    from .data import Dataset, load_dataset

# VAE, load, Dataset and load_dataset import PyTorch: they are imported on first use (PEP 562), so that
# ``import vaekit`` and the command line's --help, --version and argument errors start in a fraction of a second.
_LAZY = {"VAE": "vaekit.api", "load": "vaekit.api", "Dataset": "vaekit.data", "load_dataset": "vaekit.data"}

__all__ = ["VAE", "load", "Dataset", "load_dataset", "VaekitError", "DataError", "ConfigError",
           "CheckpointError", "TrainingError", "__version__"]

# Names that earlier releases documented as modules of the top level, now packages of their own:
# ``vaekit.evaluate.log_likelihood(...)`` and ``from vaekit import latent`` keep working.
_ALIASES = {"evaluate": "vaekit.evaluation", "latent": "vaekit.generation.latent"}
_SUBPACKAGES = ("anomaly", "evaluation", "generation", "models", "training", "export", "plots")


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found directly from now on
        return value
    if name in _ALIASES:
        return importlib.import_module(_ALIASES[name])
    if name in _SUBPACKAGES:
        return importlib.import_module(f"vaekit.{name}")
    raise AttributeError(f"module 'vaekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_ALIASES, *_SUBPACKAGES})
