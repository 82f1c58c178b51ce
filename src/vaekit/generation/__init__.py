"""Using the latent space: interpolation, dimension ranking and traversal, 2-D embeddings, the manifold grid.

Works on a fitted ``vaekit.VAE``.
"""

from . import latent
from .latent import interpolate, latent_embedding, manifold, traverse

__all__ = ["latent", "interpolate", "traverse", "latent_embedding", "manifold"]
