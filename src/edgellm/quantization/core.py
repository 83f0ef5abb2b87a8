"""``quantize(model, config)``: pick the linears, run RTN / GPTQ / AWQ on them, swap in packed layers.

This is the plumbing around the math in ``primitives``/``rtn``/``gptq``/``awq``: selecting layers
(include/exclude patterns; the LM head and embeddings stay float unless ``quantize_embeddings``),
building calibration windows, driving the shared ``calibrate.run_blockwise`` runner, replacing
each ``nn.Linear`` by a ``QuantizedLinear``, and returning a small ``QuantResult``. The model is
changed in place. Deliberately left out: saving (``storage.py``) and any evaluation.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..calibconfig import FLAT_KEYS, nest_calib
from ..errors import EdgeLLMError
from ..results import Result
from .config import QuantConfig
from .linear import QuantizedLinear, quantized_linears, set_submodule
from .rtn import rtn_quantize_weight


@dataclass
class QuantResult(Result):
    method: str
    bits: int
    group_size: int | None
    symmetric: bool
    act_bits: int | None
    seconds: float
    n_linears: int
    bits_per_weight: float           # of the quantized linears, fp16 scales and zero points included
    bytes_before: int                # fp32 bytes of those linears' weights
    bytes_after: int                 # packed codes + scales + zeros
    calib_tokens: int = 0
    kernels: dict = field(default_factory=dict)     # kernel kind -> number of layers
    embeddings: bool = False


def _is_quantized(model: nn.Module, loaded) -> bool:
    meta = getattr(loaded, "meta", None)
    if meta is not None and (getattr(meta, "edgellm", None) or {}).get("format") == "quantized":
        return True
    return bool(quantized_linears(model)) or any(type(m).__name__ == "QuantizedEmbedding" for m in model.modules())


def select_linears(model: nn.Module, cfg: QuantConfig) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers to quantize, by dotted name (LM head excluded; patterns applied).

    >>> sorted(select_linears(model, QuantConfig(include=("*.mlp.*",))))[:1]   # doctest: +SKIP
    ['model.layers.0.mlp.down_proj']
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}
    if not found:
        raise EdgeLLMError(f"{type(model).__name__} has no nn.Linear layers to quantize",
                           "quantize a transformer with Linear layers (GPT-2-style Conv1D layers are not supported)")
    if cfg.include:
        found = {n: m for n, m in found.items() if any(fnmatch.fnmatchcase(n, p) for p in cfg.include)}
    if cfg.exclude:
        found = {n: m for n, m in found.items() if not any(fnmatch.fnmatchcase(n, p) for p in cfg.exclude)}
    if not found:
        raise EdgeLLMError("the include/exclude patterns leave no Linear layer to quantize",
                           f"patterns match dotted names such as '{next(iter(n for n, _ in model.named_modules() if n))}'")
    return found


def quantize(model, config: QuantConfig | None = None, *, progress: bool = True, calib_ids: torch.Tensor | None = None,
             **fields):
    """Quantize *model* (a ``Loaded`` record or an ``nn.Module``) in place; returns ``(model, QuantResult)``.

    >>> m = edgellm.load("minilm-l6", task="classification")       # doctest: +SKIP
    >>> m, res = edgellm.quantize(m, bits=8)                         # doctest: +SKIP
    >>> m, res = quantize(m, QuantConfig(method="gptq", bits=4, group_size=32))   # doctest: +SKIP
    """
    if config is not None and not isinstance(config, QuantConfig):
        raise EdgeLLMError(f"config must be a QuantConfig (got {type(config).__name__})", "use QuantConfig(...)")
    if fields:   # keyword form: flat calibration keys (calib=FILE, calib_samples, calib_len, seed) fold into calib
        if config is not None and ("calib" in fields or any(k in fields for k in FLAT_KEYS)):
            fields.setdefault("calib", config.calib)
        fields = nest_calib(fields, "quantize")
        cfg = dataclasses.replace(config, **fields) if config is not None else QuantConfig(**fields)
    else:
        cfg = config or QuantConfig()
    loaded = model if hasattr(model, "model") and hasattr(model, "meta") else None
    module = loaded.model if loaded is not None else model
    if not isinstance(module, nn.Module):
        raise EdgeLLMError(f"cannot quantize a {type(module).__name__}", "pass edgellm.load(...) or an nn.Module")
    if _is_quantized(module, loaded):
        raise EdgeLLMError("the model is already quantized", "quantize the original float model instead")
    targets = select_linears(module, cfg)
    before = {n: m.weight.numel() * 4 for n, m in targets.items()}
    t0 = time.perf_counter()
    done: dict[str, QuantizedLinear] = {}

    def swap(full_name, parent, local_name, qw, lin):
        ql = QuantizedLinear.from_weight(qw, lin.bias, cfg.act_bits)
        set_submodule(parent, local_name, ql)
        done[full_name] = ql

    calib_tokens = 0
    if cfg.calibrated:
        from ..calibrate import run_blockwise

        calib = calib_ids if calib_ids is not None else _calibration_ids(loaded, module, cfg)
        calib_tokens = int(calib.numel())
        if cfg.method == "gptq":
            from .gptq import GPTQMethod

            method = GPTQMethod(targets, cfg, swap)
        else:
            from .awq import AWQMethod

            method = AWQMethod(targets, cfg, swap)
        run_blockwise(module, calib, method, progress=progress, desc=f"{cfg.method} w{cfg.bits}")
    for name, lin in targets.items():          # RTN, and linears outside the repeated blocks
        if name not in done:
            qw = rtn_quantize_weight(lin.weight.detach(), cfg.bits, cfg.group_size, cfg.symmetric, cfg.mse_clip)
            swap(name, module, name, qw, lin)
    if cfg.quantize_embeddings:
        from .embedding import quantize_embeddings

        quantize_embeddings(module)
    seconds = time.perf_counter() - t0
    after = sum(m.storage_bytes() for m in done.values())
    n_weights = sum(m.in_features * m.out_features for m in done.values())
    kernels: dict[str, int] = {}
    for m in done.values():
        k = m.kernel_plan()[0]
        kernels[k] = kernels.get(k, 0) + 1
    result = QuantResult(method=cfg.method, bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric,
                         act_bits=cfg.act_bits, seconds=seconds, n_linears=len(done),
                         bits_per_weight=8.0 * after / max(n_weights, 1), bytes_before=sum(before.values()),
                         bytes_after=after, calib_tokens=calib_tokens, kernels=kernels,
                         embeddings=cfg.quantize_embeddings)
    section = {"format": "quantized", "quant_config": asdict(cfg), "result": result.to_dict()}
    if getattr(module, "config", None) is not None:
        module.config.edgellm = section
    if loaded is not None:
        from ..models import model_bytes

        loaded.meta.edgellm = section
        loaded.meta.param_bytes = model_bytes(module)
    return model, result


def _calibration_ids(loaded, module, cfg: QuantConfig) -> torch.Tensor:
    from ..data import calibration_windows, resolve_data_path

    tok = getattr(loaded, "tokenizer", None)
    if tok is None:
        raise EdgeLLMError(f"{cfg.method} needs calibration data, and the model has no tokenizer",
                           "pass a Loaded model (edgellm.load) or calib_ids=[N, L] token ids")
    c = cfg.calib
    path = resolve_data_path(c.data)
    limit = getattr(getattr(module, "config", None), "max_position_embeddings", None)
    if limit and c.seq_len > limit:
        raise EdgeLLMError(f"calibration seq_len {c.seq_len} is beyond the model's maximum position ({limit})",
                           f"use --calib-seq-len {limit} or less")
    return calibration_windows(tok, path, c.samples, c.seq_len, c.seed)
