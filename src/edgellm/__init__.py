"""edgellm: make a language model fit one resource-constrained device, and prove it with measurements.

The public API, one call per capability::

    import edgellm
    m = edgellm.load("smollm2-135m")
    r = edgellm.evaluate(m, edgellm.EvalConfig(ppl="wikitext-2/wiki.test.raw"))   # -> EvalResult
    b = edgellm.bench("smollm2-135m", edgellm.BenchConfig(runs=5), threads=2)      # -> BenchResult

Names are imported lazily (explicit table below), so ``import edgellm`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "distill": "edgellm.distillation:distill",
    "finetune": "edgellm.distillation:finetune",
    "finetune_lm": "edgellm.distillation:finetune_lm",
    "TuneConfig": "edgellm.distillation:TuneConfig",
    "DistillConfig": "edgellm.distillation:DistillConfig",
    "DistillResult": "edgellm.distillation:DistillResult",
    "student_from_teacher": "edgellm.distillation:student_from_teacher",
    "load": "edgellm.models:load",
    "save": "edgellm.models:save",
    "Loaded": "edgellm.models:Loaded",
    "EdgeLLMError": "edgellm.errors:EdgeLLMError",
    "evaluate": "edgellm.api:evaluate",
    "EvalConfig": "edgellm.api:EvalConfig",
    "EvalResult": "edgellm.api:EvalResult",
    "read_task": "edgellm.evaluation.taskdata:read_task",
    "evaluate_task": "edgellm.evaluation.task:evaluate_task",
    "TaskResult": "edgellm.evaluation.task:TaskResult",
    "bench": "edgellm.measure.memory:bench",
    "BenchConfig": "edgellm.measure.memory:BenchConfig",
    "BenchResult": "edgellm.measure.memory:BenchResult",
    "open_runtime": "edgellm.runtimes:open_runtime",
    "export": "edgellm.exporters:export",
    "ExportResult": "edgellm.exporters:ExportResult",
    "GGUFExportConfig": "edgellm.exporters.gguf:GGUFExportConfig",
    "OnnxExportConfig": "edgellm.exporters.onnx:OnnxExportConfig",
    "ExecuTorchExportConfig": "edgellm.exporters.executorch:ExecuTorchExportConfig",
    "LiteRTExportConfig": "edgellm.exporters.litert:LiteRTExportConfig",
    "ServeConfig": "edgellm.serving.app:ServeConfig",
    "CalibConfig": "edgellm.calibconfig:CalibConfig",
    "serve": "edgellm.serving.server:serve",
    "quantize": "edgellm.quantization:quantize",
    "QuantConfig": "edgellm.quantization:QuantConfig",
    "QuantResult": "edgellm.quantization:QuantResult",
    "prune": "edgellm.pruning:prune",
    "PruneConfig": "edgellm.pruning:PruneConfig",
    "PruneResult": "edgellm.pruning:PruneResult",
    "rotate": "edgellm.transforms:rotate",
    "RotateConfig": "edgellm.transforms:RotateConfig",
    "RotateResult": "edgellm.transforms:RotateResult",
    "optimize": "edgellm.optimization:optimize",
    "OptimizeConfig": "edgellm.optimization:OptimizeConfig",
    "DeviceProfile": "edgellm.devices.profiles:DeviceProfile",
    "get_profile": "edgellm.devices:get_profile",
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
