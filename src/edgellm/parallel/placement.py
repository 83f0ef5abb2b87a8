"""Placement plans: which module goes on which device under memory budgets, and the pipeline's layer split.

``plan_placement(spec, "cpu=2GiB,cuda:0=4GiB,disk")`` builds the model on the meta device (no
weights read), asks Accelerate's ``infer_auto_device_map`` for a device map under the budgets
and returns it with the bytes per device (``edgellm plan --max-memory`` prints it).
``split_layers`` balances a contiguous split of decoder layers by bytes for the pipeline.

The budget parsing, the device map and the placed load itself (``edgellm.load(..., max_memory=...)``)
live in ``edgellm.placed``, in the models layer under ``edgellm.models``, so that loading calls down
into it; this module plans on top of it.
Deliberately absent: budgets for activations/KV cache (weights only, as Accelerate counts them).
"""

from __future__ import annotations

import torch

from ..errors import EdgeLLMError
from ..placed import Placement, meta_model, parse_max_memory, plain_folder, plan_device_map


def plan_placement(spec, max_memory, task: str = "causal-lm", dtype: torch.dtype = torch.float32) -> Placement:
    """Device map for *spec* under *max_memory* (``"cpu=2GiB,cuda:0=4GiB[,disk]"`` or a dict).

    *spec* is a model folder, a built-in name or a model (real or on the meta device).

    >>> p = plan_placement("smollm2-135m", "cpu=300MiB,disk")      # doctest: +SKIP
    >>> p.bytes_per_device                                         # doctest: +SKIP
    {'cpu': 285224448, 'disk': 252968448}
    """
    model = spec if isinstance(spec, torch.nn.Module) else meta_model(plain_folder(spec), task, dtype)
    budgets, disk = parse_max_memory(max_memory)
    return plan_device_map(model, budgets, disk)


def split_layers(layer_bytes: list[int], world: int, first_extra: int = 0, last_extra: int = 0) -> list[range]:
    """Split layers into *world* contiguous, non-empty slices minimising the largest slice's bytes.

    Rank 0 also holds *first_extra* bytes (the input embedding), the last rank *last_extra* (norm and
    output head). Exact: dynamic programming over split points.

    >>> split_layers([10, 10, 10, 10], 2, first_extra=15)
    [range(0, 1), range(1, 4)]
    """
    n = len(layer_bytes)
    if world < 1:
        raise EdgeLLMError(f"world size {world} is not positive", "use 1 or more processes")
    if world > n:
        raise EdgeLLMError(f"world size {world} is larger than the model's {n} decoder layers",
                           f"use at most {n} processes: each rank needs at least one layer")
    prefix = [0]
    for b in layer_bytes:
        prefix.append(prefix[-1] + b)

    def cost(r: int, i: int, j: int) -> int:   # bytes of rank r holding layers [i, j)
        return prefix[j] - prefix[i] + (first_extra if r == 0 else 0) + (last_extra if r == world - 1 else 0)

    inf = float("inf")
    # best[r][j]: minimal max-cost for ranks 0..r holding layers [0, j)
    best = [[inf] * (n + 1) for _ in range(world)]
    choice = [[0] * (n + 1) for _ in range(world)]
    for j in range(1, n + 1):
        best[0][j] = cost(0, 0, j)
    for r in range(1, world):
        for j in range(r + 1, n + 1):
            for i in range(r, j):
                c = max(best[r - 1][i], cost(r, i, j))
                if c < best[r][j]:
                    best[r][j], choice[r][j] = c, i
    bounds, j = [], n
    for r in range(world - 1, 0, -1):
        i = choice[r][j]
        bounds.append(range(i, j))
        j = i
    bounds.append(range(0, j))
    return bounds[::-1]
