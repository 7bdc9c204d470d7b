"""Fused kernels for exact speculative verification and per-task drafter-verifier divergence.

>>> import specfair_kernels as sk
>>> sk.available_backends()  # doctest: +SKIP
{'triton': '...', 'cpp': None, 'torch': None}
"""
from .api import VerifyOutput, token_divergence, verify
from .backends import available as available_backends
from .stats import TaskStats, speedup

__version__ = "0.1.0"
__all__ = ["verify", "VerifyOutput", "token_divergence", "TaskStats", "speedup", "available_backends",
           "__version__"]
