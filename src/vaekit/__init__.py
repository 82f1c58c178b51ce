"""vaekit: variational autoencoders on your own data.

    >>> import vaekit
    >>> data = vaekit.load_dataset("digits")
    >>> vae = vaekit.VAE(latent_dim=8, epochs=5).fit(data)
    >>> images = vae.sample(16)
"""

__version__ = "0.1.0"

from .api import VAE, load  # noqa: E402
from .data import Dataset, load_dataset  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, TrainingError, VaekitError  # noqa: E402

__all__ = ["VAE", "load", "Dataset", "load_dataset", "VaekitError", "DataError", "ConfigError",
           "CheckpointError", "TrainingError", "__version__"]
