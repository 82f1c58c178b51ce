"""The probabilistic model: ``VAEModel`` (encoder q(z|x), decoder p(x|z), prior p(z), 1..L stochastic layers),
its networks, likelihoods (``torch.distributions`` objects), priors, training objectives and fused kernels.

Depends on ``vaekit.config`` only; everything that trains or uses a model sits above this package.
"""

from .likelihoods import LIKELIHOODS, make_likelihood
from .model import ElboTerms, VAEModel
from .objectives import make_objective
from .priors import StandardNormalPrior, VampPrior

__all__ = ["VAEModel", "ElboTerms", "LIKELIHOODS", "make_likelihood", "make_objective",
           "StandardNormalPrior", "VampPrior"]
