"""edgellm: make a language model fit one resource-constrained device, and prove it with measurements.

The public API, one call per capability::

    import edgellm
    m = edgellm.load("smollm2-135m")
    r = edgellm.evaluate(m, ppl="wikitext-2/wiki.test.raw")
    b = edgellm.bench("smollm2-135m", threads=2)

Names are imported lazily (explicit table below), so ``import edgellm`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "distill": "edgellm.distill:distill",
    "finetune": "edgellm.distill:finetune",
    "DistillConfig": "edgellm.distill:DistillConfig",
    "DistillResult": "edgellm.distill:DistillResult",
    "student_from_teacher": "edgellm.distill:student_from_teacher",
    "load": "edgellm.models:load",
    "save": "edgellm.models:save",
    "Loaded": "edgellm.models:Loaded",
    "EdgeLLMError": "edgellm.errors:EdgeLLMError",
    "evaluate": "edgellm.api:evaluate",
    "bench": "edgellm.bench.memory:bench",
    "open_runtime": "edgellm.runtimes:open_runtime",
    "export": "edgellm.export:export",
    "serve": "edgellm.serve.server:serve",
    "quantize": "edgellm.quantize:quantize",
    "QuantConfig": "edgellm.quantize:QuantConfig",
    "QuantResult": "edgellm.quantize:QuantResult",
    "prune": "edgellm.prune:prune",
    "PruneConfig": "edgellm.prune:PruneConfig",
    "PruneResult": "edgellm.prune:PruneResult",
    "optimize": "edgellm.optimize:optimize",
    "OptimizeConfig": "edgellm.optimize:OptimizeConfig",
    "DeviceProfile": "edgellm.devices.profiles:DeviceProfile",
    "get_profile": "edgellm.devices.profiles:get_profile",
    "predict_cost": "edgellm.devices.costmodel:predict",
    "plan_placement": "edgellm.parallel.placement:plan_placement",
    "bench_pipeline": "edgellm.parallel.launch:bench_pipeline",
}


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgellm' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_API))


__all__ = list(_API)
