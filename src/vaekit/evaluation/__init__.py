"""How good a trained model is: the ELBO, importance-weighted log-likelihood (Burda et al. 2016),
bits per dimension and active units, as papers report them (``vaekit eval``).

Works on a ``VAEModel`` and tensors; depends on ``vaekit.models`` only.
"""

from .likelihood import ElboResult, Evaluation, active_units, elbo, evaluate, log_likelihood

__all__ = ["evaluate", "log_likelihood", "elbo", "active_units", "Evaluation", "ElboResult"]
