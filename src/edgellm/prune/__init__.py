"""Pruning: magnitude, Wanda and SparseGPT (unstructured and N:M), and structured pruning
(depth, width, attention heads) that physically shrinks the model.

>>> import edgellm
>>> m = edgellm.load("smollm2-135m")                                          # doctest: +SKIP
>>> m, r = edgellm.prune(m, edgellm.PruneConfig(method="sparsegpt", pattern="2:4"))   # doctest: +SKIP
"""

import sys
import types

from .config import PruneConfig
from .run import PruneResult, prune
from .structured import remove_layers

__all__ = ["PruneConfig", "PruneResult", "prune", "remove_layers"]


class _CallableModule(types.ModuleType):
    """``edgellm.prune`` is both this package and the one call: once the package is imported, Python
    binds the attribute ``edgellm.prune`` to the module, so the module itself forwards calls to ``prune``."""

    def __call__(self, *args, **kwargs):
        return prune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
