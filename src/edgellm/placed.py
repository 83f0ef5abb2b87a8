"""Load a model folder under memory budgets: which module goes on which device, and how many bytes each holds.

``load_folder_placed`` (behind ``edgellm.load(..., max_memory=...)``) builds the model on the meta
device (``meta_model``: no weights read), asks Accelerate's ``infer_auto_device_map`` for a device
map under the budgets (``plan_device_map``), then loads the folder with that map through
transformers' ``from_pretrained(device_map=...)``, which dispatches with Accelerate hooks
(offloaded modules are streamed in from CPU RAM or an offload folder when they run).
Budgets are written ``"cpu=2GiB,cuda:0=4GiB,disk"`` (``parse_max_memory``).

Accelerate fills GPUs first, then the CPU, then disk; disk is used only when the budget names
it, otherwise a budget that cannot hold the model is an error stating the bytes needed.
This module sits in the models layer, under ``edgellm.models`` (which calls it) and over
``edgellm.modelfiles``; the planning front door for users, ``plan_placement``, and the pipeline's
layer split live in ``edgellm.parallel.placement``.
Deliberately absent: budgets for activations/KV cache (weights only, as Accelerate counts them),
and placement of edgellm's packed quantized folders (they load whole, in memory).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import EdgeLLMError
from .fileio import verify_manifest
from .modelfiles import (BUILTINS, auto_class, builtin_path, check_safetensors, gguf_cache_folder, has_tokenizer,
                         quiet_transformers, task_from_config)
from .report.table import human_bytes
from .transforms.rotate import rotated_cache_folder

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``2GiB``, ``500MB`` or ``123456``.

    >>> parse_size("1.5KiB")
    1536
    """
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise EdgeLLMError(f"'{text}' is not a size", "write sizes like 2GiB, 512MiB, 500MB or a byte count")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])


def device_key(name: str):
    """Accelerate's key for a device name: ``cuda:1`` → 1, ``cpu``/``disk``/``mps`` unchanged.

    >>> device_key("cuda:1"), device_key("CPU")
    (1, 'cpu')
    """
    name = name.strip().lower()
    if name in ("cpu", "disk", "mps"):
        return name
    m = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", name)
    if m:
        return int(m.group(1) or 0)
    raise EdgeLLMError(f"unknown device '{name}' in the memory budget", "use cpu, cuda:N, mps or disk")


def device_name(key) -> str:
    """The device name of an Accelerate key: 1 → ``cuda:1``; ``cpu``/``disk`` unchanged."""
    return f"cuda:{key}" if isinstance(key, int) else str(key)


def parse_max_memory(spec) -> tuple[dict, bool]:
    """``"cpu=2GiB,cuda:0=4GiB,disk"`` (or a dict) → (Accelerate max_memory dict, disk allowed).

    >>> parse_max_memory("cpu=2GiB,cuda:0=4GiB,disk")
    ({'cpu': 2147483648, 0: 4294967296}, True)
    """
    if isinstance(spec, dict):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            name, _, size = part.partition("=")
            items.append((name, size if size else None))
    budgets, disk = {}, False
    for name, size in items:
        key = device_key(str(name)) if not isinstance(name, int) else name
        if key == "disk":
            disk = True       # unlimited: an offload folder
            continue
        if size is None:
            raise EdgeLLMError(f"device '{name}' in the memory budget has no size", f"write {name}=2GiB")
        if key in budgets:
            raise EdgeLLMError(f"device '{name}' appears twice in the memory budget", "name each device once")
        budgets[key] = parse_size(size)
    if not budgets:
        raise EdgeLLMError(f"memory budget '{spec}' names no device with a size", "write e.g. cpu=2GiB,cuda:0=4GiB[,disk]")
    return budgets, disk


def format_budget(budgets: dict, disk: bool) -> str:
    """The budget as the user writes it, sizes in binary units.

    >>> format_budget({"cpu": 2**30, 0: 2**31}, True)             # doctest: +SKIP
    'cpu=1.0 GiB,cuda:0=2.0 GiB,disk'
    """
    parts = [f"{device_name(k)}={human_bytes(v)}" for k, v in budgets.items()]
    return ",".join(parts + (["disk"] if disk else []))


@dataclass(frozen=True)
class Placement:
    """A device map under budgets: module name → device, and weight bytes per device."""
    device_map: dict[str, str]           # module prefix -> "cuda:0" | "cpu" | "disk"
    bytes_per_device: dict[str, int]
    budgets: dict[str, int | None]       # device -> budget in bytes (None: disk, unlimited)
    total_bytes: int
    largest_block_bytes: int
    accelerate_map: dict = field(default_factory=dict, repr=False)   # the same map with Accelerate's keys

    def to_dict(self) -> dict:
        return {"device_map": self.device_map, "bytes_per_device": self.bytes_per_device, "budgets": self.budgets,
                "total_bytes": self.total_bytes, "largest_block_bytes": self.largest_block_bytes}


def meta_model(path: Path, task: str = "causal-lm", dtype: torch.dtype = torch.float32):
    """The model of an HF folder built on the meta device (parameters cost no memory), tied like the real one.

    >>> meta_model(plain_folder("smollm2-135m")).model.embed_tokens.weight.device   # doctest: +SKIP
    device(type='meta')
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    quiet_transformers()
    config = AutoConfig.from_pretrained(path)
    with init_empty_weights(include_buffers=False):
        model = auto_class(task).from_config(config, dtype=dtype)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def plain_folder(spec) -> Path:
    """The plain HF safetensors folder behind *spec* (built-in names resolve to their converted cache folder).

    >>> plain_folder("smollm2-135m").parent.name                  # doctest: +SKIP
    'gguf-fp32'
    """
    name = str(spec)
    if name in BUILTINS:
        path = builtin_path(name)
        if path.suffix == ".gguf":
            path = gguf_cache_folder(path)
        if BUILTINS[name].rotate_seed is not None:
            path = rotated_cache_folder(path, BUILTINS[name].rotate_seed)
    else:
        path = Path(name).expanduser()
    if not path.is_dir() or not (path / "config.json").exists() or not list(path.glob("*.safetensors")):
        raise EdgeLLMError(f"'{spec}' is not a model folder with config.json and safetensors weights",
                           "placement and pipelines need a plain HF folder or a built-in name")
    if (json.loads((path / "config.json").read_text()).get("edgellm") or {}).get("format"):
        raise EdgeLLMError(f"'{spec}' is an edgellm packed folder, which loads whole",
                           "place or pipeline the unpacked model instead")
    return path


def plan_device_map(model: torch.nn.Module, budgets: dict, disk: bool) -> Placement:
    """Accelerate's device map of *model* (real or on the meta device) under parsed *budgets*.

    >>> plan_device_map(model, *parse_max_memory("cpu=300MiB,disk")).bytes_per_device   # doctest: +SKIP
    {'cpu': 285224448, 'disk': 252968448}
    """
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes, get_max_layer_size

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    sizes = compute_module_sizes(model)
    total = sizes[""]
    children = [(n, m) for n, m in model.named_children()]
    largest, _ = get_max_layer_size(children, sizes, no_split)
    amap = infer_auto_device_map(model, max_memory=dict(budgets), no_split_module_classes=no_split)
    per_device: dict[str, int] = {}
    for name, dev in amap.items():
        per_device[device_name(dev)] = per_device.get(device_name(dev), 0) + sizes.get(name, 0)
    on_disk = per_device.get("disk", 0)
    if on_disk and not disk:
        held = total - on_disk
        raise EdgeLLMError(
            f"the budget {format_budget(budgets, disk)} cannot hold the model: it needs {total} bytes "
            f"({human_bytes(total)}) of weights, the budget holds {held} bytes and {on_disk} bytes do not fit "
            f"(with offloading, the main device also keeps room for the largest block, {largest} bytes)",
            f"raise the budgets to at least {total} bytes in all, or add ',disk' to offload the rest to disk")
    named = {device_name(k): v for k, v in budgets.items()}
    if disk:
        named["disk"] = None
    return Placement(device_map={n: device_name(d) for n, d in amap.items()}, bytes_per_device=per_device,
                     budgets=named, total_bytes=total, largest_block_bytes=largest, accelerate_map=dict(amap))


def load_folder_placed(path: Path, task: str | None, dtype: torch.dtype, max_memory, offload_folder=None):
    """Load the HF folder *path* placed under *max_memory*; returns (model, tokenizer, extra) like models.py's loaders.

    Weights outside the GPU/CPU budgets go to *offload_folder* (a fresh temporary folder if none);
    Accelerate's hooks bring each offloaded module in when it runs, so outputs equal an in-memory load.

    >>> m = edgellm.load("smollm2-135m", max_memory="cpu=200MiB,disk")   # doctest: +SKIP
    >>> m.model.hf_device_map["model.layers"]                           # doctest: +SKIP
    'disk'
    """
    from transformers import AutoTokenizer

    path = plain_folder(path)
    for f in sorted(path.glob("*.safetensors")):
        check_safetensors(f)
    verify_manifest(path)
    task = task or task_from_config(json.loads((path / "config.json").read_text()))
    model = meta_model(path, task, dtype)
    budgets, disk = parse_max_memory(max_memory)
    placement = plan_device_map(model, budgets, disk)
    del model
    for dev in placement.accelerate_map.values():
        if isinstance(dev, int) and dev >= torch.cuda.device_count():
            raise EdgeLLMError(f"the placement puts modules on cuda:{dev}, which this machine does not have",
                               "budget only the devices present (cpu, disk, cuda:N)")
    folder = None
    if "disk" in placement.bytes_per_device:
        folder = str(offload_folder or tempfile.mkdtemp(prefix="edgellm-offload-"))
    model = auto_class(task).from_pretrained(path, dtype=dtype, device_map=placement.accelerate_map,
                                             offload_folder=folder, use_safetensors=True)
    model.eval()
    tok = AutoTokenizer.from_pretrained(path) if has_tokenizer(path) else None
    return model, tok, {"placement": placement.to_dict(), "offload_folder": folder}
