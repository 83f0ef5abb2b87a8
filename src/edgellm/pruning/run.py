"""``prune(model, PruneConfig)``: the one entry point, and its result record.

Dispatch is a plain ``match`` on the config: magnitude needs no data; Wanda and SparseGPT
run the shared ``run_blockwise`` calibration runner; structured kinds score once and then
physically remove layers, channels or heads (``structured.py``). The model is changed in
place and returned. Deliberately absent: saving (``storage.save_sparse`` for unstructured
results, ``edgellm.models.save`` for structured ones) and any fine-tuning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..calibrate import find_blocks, run_blockwise
from ..data import calibration_windows
from ..errors import EdgeLLMError
from ..results import Result
from ..families import get_path, projection
from ..models import Loaded, count_params, model_bytes
from . import structured as st
from .config import PruneConfig
from .magnitude import prune_magnitude, target_linears
from .sparsegpt import SparseGPTMethod
from .wanda import WandaMethod


@dataclass
class PruneResult(Result):
    """What a pruning run did: sizes before and after, achieved sparsity, what was removed, time."""

    method: str
    structure: str | None
    pattern: str | None
    target_sparsity: float | None
    achieved_sparsity: float | None   # zeros / weights over the pruned linears (unstructured)
    n_linears: int
    params_before: int
    params_after: int                 # parameters that remain (structured: the smaller model)
    nonzero_params: int               # parameters that are not exactly zero
    bytes_before: int
    bytes_after: int
    seconds: float
    calib_tokens: int
    removed: dict[str, Any] = field(default_factory=dict)   # layers / channels / heads taken out
    scores: list[float] = field(default_factory=list)       # depth: angular distance per original layer


def prune(model, config: PruneConfig, *, progress: bool = True, calib_ids: torch.Tensor | None = None):
    """Prune *model* (a ``Loaded`` record or an ``nn.Module``) in place; returns ``(model, PruneResult)``.

    Calibrated methods draw ``config.calib.samples`` windows of ``config.calib.seq_len`` tokens from
    ``config.calib.data`` with the model's tokenizer, unless *calib_ids* ``[N, L]`` is given.

    >>> m = edgellm.load("smollm2-135m")                                          # doctest: +SKIP
    >>> _, r = prune(m, PruneConfig(method="wanda", sparsity=0.5))                # doctest: +SKIP
    >>> round(r.achieved_sparsity, 3)                                             # doctest: +SKIP
    0.5
    """
    if not isinstance(config, PruneConfig):
        raise EdgeLLMError(f"config must be a PruneConfig, not {type(config).__name__}", "pass PruneConfig(...)")
    loaded = model if isinstance(model, Loaded) else None
    module: nn.Module = loaded.model if loaded is not None else model
    if not isinstance(module, nn.Module):
        raise EdgeLLMError(f"cannot prune a {type(model).__name__}", "pass a Loaded record or a torch nn.Module")
    t0 = time.perf_counter()
    params_before, bytes_before = count_params(module), model_bytes(module)
    if config.structure is not None:
        st.check_supported(module)          # before any calibration work
        calib = _calib(loaded, config, calib_ids) if config.calibrated else None
        removed, scores = _structured(module, config, calib, progress)
        targets: dict[str, nn.Linear] = {}
    else:
        targets = target_linears(module, config)  # validates include/exclude and N:M shapes first
        if not targets:
            raise EdgeLLMError("no linear layer matches the include/exclude patterns",
                               "check --include/--exclude against names like model.layers.0.mlp.down_proj")
        calib = _calib(loaded, config, calib_ids) if config.calibrated else None
        _unstructured(module, config, calib, progress)
        removed, scores = {}, []
    zeros = sum(int((lin.weight == 0).sum()) for lin in targets.values())
    numel = sum(lin.weight.numel() for lin in targets.values())
    params_after = count_params(module)
    nonzero = params_after - sum(int((p == 0).sum()) for p in module.parameters())
    result = PruneResult(
        method=config.method, structure=config.structure, pattern=config.pattern,
        target_sparsity=config.effective_sparsity if config.structure is None else None,
        achieved_sparsity=zeros / numel if numel else None, n_linears=len(targets),
        params_before=params_before, params_after=params_after, nonzero_params=nonzero,
        bytes_before=bytes_before, bytes_after=model_bytes(module), seconds=time.perf_counter() - t0,
        calib_tokens=int(calib.numel()) if calib is not None else 0, removed=removed, scores=scores)
    if loaded is not None:
        loaded.meta.n_params, loaded.meta.param_bytes = params_after, result.bytes_after
    return (loaded if loaded is not None else module), result


def _calib(loaded: Loaded | None, cfg: PruneConfig, calib_ids: torch.Tensor | None) -> torch.Tensor:
    if calib_ids is not None:
        return calib_ids
    if loaded is None or loaded.tokenizer is None:
        raise EdgeLLMError(f"'{cfg.method}' needs calibration data, and the model has no tokenizer",
                           "pass a Loaded record (edgellm.load) or calib_ids=[N, L] token ids")
    c = cfg.calib
    return calibration_windows(loaded.tokenizer, c.data, c.samples, c.seq_len, c.seed)


def _unstructured(module: nn.Module, cfg: PruneConfig, calib, progress: bool) -> None:
    match cfg.method:
        case "magnitude":
            prune_magnitude(module, cfg)
        case "wanda":
            run_blockwise(module, calib, WandaMethod(cfg, find_blocks(module)[0]), progress=progress, desc="wanda")
        case "sparsegpt":
            run_blockwise(module, calib, SparseGPTMethod(cfg, find_blocks(module)[0]), progress=progress,
                          desc="sparsegpt")


def _budget_excess(module: nn.Module, cfg: PruneConfig) -> tuple[float | None, int]:
    """(amount over budget, bytes per parameter) — in parameters, or bytes for max_bytes."""
    elsize = next(module.parameters()).element_size()
    if cfg.max_params is not None:
        return count_params(module) - int(cfg.max_params), 1
    if cfg.max_bytes is not None:
        return model_bytes(module) - int(cfg.max_bytes), elsize
    return None, 1


def _structured(module: nn.Module, cfg: PruneConfig, calib, progress: bool) -> tuple[dict, list[float]]:
    mc = module.config
    spec = st.check_supported(module)
    blocks = find_blocks(module)[1]
    L = len(blocks)
    excess, per_param = _budget_excess(module, cfg)
    match cfg.structure:
        case "depth":
            unit = sum(p.numel() for p in blocks[0].parameters()) * per_param
            k = st.units_to_remove(L, cfg.ratio, excess, unit, "layers")
            s = st.score_structure(module, calib, mlp=False, heads=False, progress=progress)
            drop = sorted(sorted(range(L), key=lambda i: s.layer[i])[:k])
            if k:
                st.remove_layers(module, drop)
            return {"layers": drop}, s.layer
        case "width":
            gate, up = (projection(blocks[0], spec, r) for r in ("gate", "up"))
            per_channel = gate.in_features * 3 + sum(int(b is not None) for b in (gate.bias, up.bias))
            k = st.units_to_remove(mc.intermediate_size, cfg.ratio, excess, L * per_channel * per_param, "MLP channels")
            s = st.score_structure(module, calib, mlp=True, heads=False, progress=progress)
            removed = st.remove_channels(module, s.channels, k) if k else {}
            return {"channels_per_layer": k, "channels": removed}, s.layer
        case "heads":
            H, G = mc.num_attention_heads, mc.num_key_value_heads
            q, k_, v = (projection(blocks[0], spec, r) for r in ("q", "k", "v"))
            hd, hidden = int(get_path(blocks[0], spec.attention).head_dim), q.in_features
            gqa = H // G > 1
            per_head = hidden * hd * (2 if gqa else 4) + hd * sum(int(p.bias is not None) for p in
                                                                  ((q,) if gqa else (q, k_, v)))
            k = st.units_to_remove(H, cfg.ratio, excess, L * per_head * per_param, "attention heads per layer",
                                   step=G if gqa else 1)
            s = st.score_structure(module, calib, mlp=False, heads=True, progress=progress)
            removed = st.remove_heads(module, s.heads, k // G if gqa else k) if k else {}
            return {"heads_per_layer": k, "heads": removed}, s.layer
    raise AssertionError(cfg.structure)
