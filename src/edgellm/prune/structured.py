"""Structured pruning that physically removes parameters, so the result is a smaller, standard
HF model that loads with ``from_pretrained``.

This first part holds the depth primitive shared by pruning and distillation (students are
built by dropping whole blocks). Scoring and width/head removal are added by the pruning issue.
"""

from __future__ import annotations

from torch import nn

from ..calibrate import find_blocks
from ..errors import EdgeLLMError


def remove_layers(model: nn.Module, drop: list[int]) -> nn.Module:
    """Remove the blocks at indices *drop* in place and fix the config; returns the model.

    >>> remove_layers(model, [3, 7]).config.num_hidden_layers     # doctest: +SKIP
    28
    """
    path, blocks = find_blocks(model)
    n = len(blocks)
    drop = sorted(set(int(i) for i in drop))
    if any(i < 0 or i >= n for i in drop):
        raise EdgeLLMError(f"layer indices {drop} out of range for a {n}-layer model", f"use indices 0..{n - 1}")
    if len(drop) >= n:
        raise EdgeLLMError(f"removing {len(drop)} of {n} layers would leave none", "keep at least one layer")
    keep = [b for i, b in enumerate(blocks) if i not in drop]
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    setattr(parent, path.rsplit(".", 1)[-1], nn.ModuleList(keep))
    for new_idx, block in enumerate(keep):  # attention modules index their KV-cache slot by layer_idx
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in drop]
    return model
