"""Pruning: magnitude, Wanda and SparseGPT (unstructured and N:M), and structured pruning
(depth, width, attention heads) that physically shrinks the model.

>>> import edgellm
>>> m = edgellm.load("smollm2-135m")                                          # doctest: +SKIP
>>> m, r = edgellm.prune(m, edgellm.PruneConfig(method="sparsegpt", pattern="2:4"))   # doctest: +SKIP
"""

from .config import PruneConfig
from .run import PruneResult, prune
from .structured import remove_layers

__all__ = ["PruneConfig", "PruneResult", "prune", "remove_layers"]

