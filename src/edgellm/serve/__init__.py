"""Serving: an OpenAI-compatible HTTP server for one model on one device.

``edgellm.serve(artifact, ...)`` (= ``edgellm.serve.server.serve``) runs it; ``app.py`` holds the API,
``engine.py`` the model worker and its bounded queue, ``constrain.py`` JSON-schema constrained decoding,
``schemas.py`` the request bodies. The package itself is callable, so ``edgellm.serve(...)`` works both
before and after ``edgellm.serve.*`` submodules are imported (importing a submodule makes the package,
not the function, the ``serve`` attribute of ``edgellm``).
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .server import serve

        return serve(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
