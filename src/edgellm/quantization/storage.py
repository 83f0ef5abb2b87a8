"""Quantized model folders: folder format ``"quantized"``.

A folder holds ``config.json`` (the model's HF config plus an ``"edgellm"`` section: format,
the QuantConfig used, the result record, and a ``layers`` table giving each ``QuantizedLinear``'s
shape and grid), ``model.quantized.safetensors`` (packed codes, fp16 scales, uint8 zeros, and
every float tensor that stayed float; tied weights once), the tokenizer, the generation config,
and ``manifest.json`` with a sha256 per file. Size on disk follows the bits.

``edgellm.load`` dispatches here (``models.FOLDER_FORMATS``): the architecture is built from the
config, the recorded layers are swapped for empty ``QuantizedLinear``s, and the tensors are
loaded as stored, so outputs are bit-identical to the model that was saved. Deliberately
absent: writing plain-HF quantization configs (GPTQ/AWQ checkpoint formats of other tools).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import EdgeLLMError
from ..fileio import atomic_dir, write_manifest
from .embedding import QuantizedEmbedding
from .linear import QuantizedLinear, quantized_linears, set_submodule

WEIGHTS_FILE = "model.quantized.safetensors"


def save_quantized(loaded, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Save a quantized ``Loaded`` model as a packed folder, atomically.

    >>> m, _ = edgellm.quantize(edgellm.load("smollm2-135m"), bits=4, group_size=32)   # doctest: +SKIP
    >>> save_quantized(m, "out/w4")                                                   # doctest: +SKIP
    """
    from safetensors.torch import save_file

    from ..models import unique_tensors

    model = getattr(loaded, "model", loaded)
    qlin = quantized_linears(model)
    if not qlin:
        raise EdgeLLMError("the model has no quantized layers", "run edgellm.quantization first, or save with edgellm.save")
    qemb = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedEmbedding)}
    persistent = set(model.state_dict())
    tensors = {name: t.detach().cpu().contiguous() for name, t in unique_tensors(model) if name in persistent}
    section = dict(getattr(model.config, "edgellm", None) or {})
    section.update({"format": "quantized", "version": 1,
                    "layers": {n: m.spec() for n, m in qlin.items()},
                    "embeddings": {n: m.spec() for n, m in qemb.items()}})
    cfg = model.config.to_dict()
    cfg["architectures"] = [type(model).__name__]   # e.g. a classifier built on an encoder checkpoint
    cfg["edgellm"] = section
    with atomic_dir(out, force=force, inputs=(getattr(getattr(loaded, "meta", None), "source", None),)) as tmp:
        # one metadata key: safetensors writes __metadata__ in the order of a Rust HashMap seeded afresh in every
        # process, so two keys made the same tensors' files differ between processes (the folder format and
        # version are in config.json's "edgellm" section)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        tok = getattr(loaded, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(tmp)
        write_manifest(tmp)
    return Path(out)


def load_quantized_model(folder, config_dict: dict, task: str, dtype) -> tuple[torch.nn.Module, dict]:
    """Rebuild a ``"quantized"`` folder's model (called by ``edgellm.models.load``)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    from ..modelfiles import auto_class

    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    if not path.exists():
        raise EdgeLLMError(f"quantized folder '{folder}' has no {WEIGHTS_FILE}", "re-create it with edgellm quantize")
    section = config_dict.get("edgellm") or {}
    layers, embeddings = section.get("layers") or {}, section.get("embeddings") or {}
    if not layers:
        raise EdgeLLMError(f"'{folder}/config.json' lists no quantized layers", "re-create it with edgellm quantize")
    config = AutoConfig.from_pretrained(folder)
    with no_init_weights():
        model = auto_class(task).from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    for name, spec in layers.items():
        set_submodule(model, name, QuantizedLinear.from_spec(spec))
    for name, spec in embeddings.items():
        set_submodule(model, name, QuantizedEmbedding.from_spec(spec))
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [k for k in missing if not _is_tied(model, k, state)]
    if missing or unexpected:
        raise EdgeLLMError(f"quantized folder '{folder}' does not match its config (missing {missing[:3]}, "
                           f"unexpected {list(unexpected)[:3]})", "re-create it with edgellm quantize")
    if dtype not in (None, torch.float32):
        model.to(dtype)
    bits = [QuantizedLinear.from_spec(s).bits for s in layers.values()]
    return model.eval(), {"n_params": n_params, "quantized_linears": len(layers), "bits": sorted(set(bits))}


def _is_tied(model: torch.nn.Module, key: str, state: dict) -> bool:
    """True when *key* shares storage with a loaded tensor (a tied LM head)."""
    sd = model.state_dict(keep_vars=True)
    t = sd.get(key)
    if t is None:
        return False
    ptr = t.untyped_storage().data_ptr()
    return any(sd[k].untyped_storage().data_ptr() == ptr for k in state if k in sd and k != key)
