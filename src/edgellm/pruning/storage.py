"""Compact storage for sparse (unstructured or N:M) models: folder format ``"sparse"``.

A weight that is cheaper stored sparse is written as two tensors, ``<name>.__values`` (the
non-zeros in row-major order, original dtype) and ``<name>.__bitmask`` (one bit per weight,
LSB first, uint8), so the size on disk falls with sparsity: at 50% an fp32 weight costs
16 + 1 = 17 bits instead of 32. Everything else is stored as is. ``config.json`` carries
``"edgellm": {"format": "sparse", ...}`` and ``edgellm.load`` dispatches to
``load_sparse_model``, which rebuilds the dense weights bit-exactly.

Deliberately absent: sparse kernels. PyTorch on the CPU has none that beats dense GEMV at
these sparsities, so the loaded model is dense with zeros: this saves size on disk, not time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import EdgeLLMError
from ..fileio import atomic_dir, write_manifest
from ..modelfiles import auto_class
from ..models import unique_tensors

VALUES, BITMASK = ".__values", ".__bitmask"
WEIGHTS_FILE = "model.sparse.safetensors"
NO_KERNEL_NOTE = ("the PyTorch runtime has no sparse kernel: the sparse format saves size on disk, not time "
                  "(weights are expanded to dense at load, so decode speed is unchanged)")


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 bytes, 8 entries per byte, least significant bit first.

    >>> pack_bits(torch.tensor([True, False, True])).tolist()
    [5]
    """
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first *numel* bits as a flat bool tensor."""
    shifts = torch.arange(8, dtype=torch.uint8)
    bits = (packed.view(-1, 1) >> shifts) & 1
    return bits.flatten()[:numel].bool()


def encode(t: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """``{values, bitmask}`` for *t* when that is smaller than *t* itself, else None."""
    if t.dim() < 2 or not t.is_floating_point():
        return None
    nz = t != 0
    nnz = int(nz.sum())
    if nnz * t.element_size() + (t.numel() + 7) // 8 >= 0.95 * t.numel() * t.element_size():
        return None
    return {VALUES: t[nz].contiguous(), BITMASK: pack_bits(nz)}


def decode(values: torch.Tensor, bitmask: torch.Tensor, shape) -> torch.Tensor:
    """Dense tensor of *shape* from ``encode``'s two parts (bit-exact)."""
    numel = int(torch.Size(shape).numel())
    nz = unpack_bits(bitmask, numel)
    if int(nz.sum()) != values.numel():
        raise EdgeLLMError("sparse tensor is inconsistent: bitmask and values disagree", "re-create the model folder")
    out = torch.zeros(numel, dtype=values.dtype)
    out[nz] = values
    return out.view(tuple(shape))


def save_sparse(loaded, out: str | os.PathLike, *, force: bool = False, edgellm_section: dict | None = None) -> Path:
    """Save *loaded* (a ``Loaded`` record) as a compact sparse folder, atomically.

    >>> save_sparse(edgellm.load("pruned-in-memory"), "out/wanda50")    # doctest: +SKIP
    """
    from safetensors.torch import save_file

    model = loaded.model
    tensors, shapes, n_sparse = {}, {}, 0
    persistent = set(model.state_dict())
    for name, t in unique_tensors(model):   # tied weights once; the loader re-ties them
        if name not in persistent:
            continue   # non-persistent buffers are rebuilt by the model class
        t = t.detach().cpu()
        enc = encode(t)
        if enc is None:
            tensors[name] = t.contiguous()
        else:
            tensors[name + VALUES], tensors[name + BITMASK] = enc[VALUES], enc[BITMASK]
            shapes[name] = list(t.shape)
            n_sparse += 1
    section = {"format": "sparse", "sparse_tensors": n_sparse, **(edgellm_section or {})}
    cfg = model.config.to_dict()
    cfg["edgellm"] = section
    with atomic_dir(out, force=force, inputs=(getattr(getattr(loaded, "meta", None), "source", None),)) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"edgellm_shapes": json.dumps(shapes)})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        write_manifest(tmp)
    return Path(out)


def load_sparse_model(folder: Path, config_dict: dict, task: str, dtype) -> tuple[torch.nn.Module, dict]:
    """Rebuild the dense model of a ``"sparse"`` folder (called by ``edgellm.models.load``)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    path = Path(folder) / WEIGHTS_FILE
    if not path.exists():
        raise EdgeLLMError(f"sparse folder '{folder}' has no {WEIGHTS_FILE}", "re-create it with edgellm prune")
    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "edgellm"):   # the loaded model is dense: a plain save of it must not claim "sparse"
        del config.edgellm
    model = auto_class(task).from_config(config)
    state = {}
    with safe_open(str(path), framework="pt") as f:
        shapes = json.loads((f.metadata() or {}).get("edgellm_shapes", "{}"))
        for key in f.keys():
            if key.endswith(BITMASK):
                continue
            if key.endswith(VALUES):
                name = key[: -len(VALUES)]
                state[name] = decode(f.get_tensor(key), f.get_tensor(name + BITMASK), shapes[name])
            else:
                state[key] = f.get_tensor(key)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = _tied_names(model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise EdgeLLMError(f"sparse folder '{folder}' does not match its config (missing {missing[:3]}, "
                           f"unexpected {list(unexpected)[:3]})", "re-create it with edgellm prune")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.to(dtype)
    nnz = sum(int((p != 0).sum()) for p in model.parameters())
    return model.eval(), {"nonzero_params": nnz}


def _tied_names(model: torch.nn.Module) -> set[str]:
    """State-dict names that share storage with an earlier name (e.g. a tied LM head)."""
    seen, tied = {}, set()
    for name, t in model.state_dict(keep_vars=True).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            tied.add(name)
        seen.setdefault(key, name)
    return tied
