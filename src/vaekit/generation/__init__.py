"""Using the latent space: interpolation, dimension ranking and traversal, 2-D embeddings, the manifold grid;
and the samplers ``VAE.sample`` draws its codes from (the prior, or a mixture fitted after training).

Works on a fitted ``vaekit.VAE``.
"""

from . import latent, samplers
from .latent import interpolate, latent_embedding, manifold, traverse
from .samplers import SAMPLERS, GaussianMixtureSampler, PriorSampler, Sampler, fit_sampler, load_sampler, save_sampler

__all__ = ["latent", "interpolate", "traverse", "latent_embedding", "manifold", "samplers", "SAMPLERS", "Sampler",
           "PriorSampler", "GaussianMixtureSampler", "fit_sampler", "load_sampler", "save_sampler"]
