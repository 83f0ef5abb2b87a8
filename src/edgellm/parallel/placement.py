"""Memory-budgeted placement: which module goes on which device, and how many bytes each holds.

``plan_placement(spec, "cpu=2GiB,cuda:0=4GiB,disk")`` builds the model on the meta device (no
weights read), asks Accelerate's ``infer_auto_device_map`` for a device map under the budgets
and returns it with the bytes per device. ``load_folder_placed`` (behind ``edgellm.load(..., max_memory=...)``) loads a folder with that map through
transformers' ``from_pretrained(device_map=...)``, which dispatches with Accelerate hooks
(offloaded modules are streamed in from CPU RAM or an offload folder when they run).
``split_layers`` balances a contiguous split of decoder layers by bytes for the pipeline.

Accelerate fills GPUs first, then the CPU, then disk; disk is used only when the budget names
it, otherwise a budget that cannot hold the model is an error stating the bytes needed.
Deliberately absent: budgets for activations/KV cache (weights only, as Accelerate counts them),
and placement of edgellm's packed quantized folders (they load whole, in memory).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import EdgeLLMError

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
    """Accelerate's key for a device name: ``cuda:1`` → 1, ``cpu``/``disk``/``mps`` unchanged."""
    name = name.strip().lower()
    if name in ("cpu", "disk", "mps"):
        return name
    m = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", name)
    if m:
        return int(m.group(1) or 0)
    raise EdgeLLMError(f"unknown device '{name}' in the memory budget", "use cpu, cuda:N, mps or disk")


def device_name(key) -> str:
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
    from ..report.table import human_bytes

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
    """The model of an HF folder built on the meta device (parameters cost no memory), tied like the real one."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from ..models import _auto_class, _quiet_transformers

    _quiet_transformers()
    config = AutoConfig.from_pretrained(path)
    with init_empty_weights(include_buffers=False):
        model = _auto_class(task).from_config(config, dtype=dtype)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def plain_folder(spec) -> Path:
    """The plain HF safetensors folder behind *spec* (built-in names resolve to their converted cache folder)."""
    from ..models import BUILTINS, builtin_path, gguf_cache_folder

    name = str(spec)
    if name in BUILTINS:
        path = builtin_path(name)
        if path.suffix == ".gguf":
            path = gguf_cache_folder(path)
    else:
        path = Path(name).expanduser()
    if not path.is_dir() or not (path / "config.json").exists() or not list(path.glob("*.safetensors")):
        raise EdgeLLMError(f"'{spec}' is not a model folder with config.json and safetensors weights",
                           "placement and pipelines need a plain HF folder or a built-in name")
    import json

    if (json.loads((path / "config.json").read_text()).get("edgellm") or {}).get("format"):
        raise EdgeLLMError(f"'{spec}' is an edgellm packed folder, which loads whole",
                           "place or pipeline the unpacked model instead")
    return path


def plan_placement(spec, max_memory, task: str = "causal-lm", dtype: torch.dtype = torch.float32) -> Placement:
    """Device map for *spec* under *max_memory* (``"cpu=2GiB,cuda:0=4GiB[,disk]"`` or a dict).

    >>> p = plan_placement("smollm2-135m", "cpu=300MiB,disk")      # doctest: +SKIP
    >>> p.bytes_per_device                                         # doctest: +SKIP
    {'cpu': 285224448, 'disk': 252968448}
    """
    model = spec if isinstance(spec, torch.nn.Module) else meta_model(plain_folder(spec), task, dtype)
    budgets, disk = parse_max_memory(max_memory)
    return _plan(model, budgets, disk)


def _plan(model: torch.nn.Module, budgets: dict, disk: bool) -> Placement:
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes, get_max_layer_size

    from ..report.table import human_bytes

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
    import json

    from transformers import AutoTokenizer

    from ..models import _auto_class, _has_tokenizer, _task_from_config, check_safetensors, verify_manifest

    path = plain_folder(path)
    for f in sorted(path.glob("*.safetensors")):
        check_safetensors(f)
    verify_manifest(path)
    task = task or _task_from_config(json.loads((path / "config.json").read_text()))
    model = meta_model(path, task, dtype)
    budgets, disk = parse_max_memory(max_memory)
    placement = _plan(model, budgets, disk)
    del model
    for dev in placement.accelerate_map.values():
        if isinstance(dev, int) and dev >= torch.cuda.device_count():
            raise EdgeLLMError(f"the placement puts modules on cuda:{dev}, which this machine does not have",
                               "budget only the devices present (cpu, disk, cuda:N)")
    folder = None
    if "disk" in placement.bytes_per_device:
        folder = str(offload_folder or tempfile.mkdtemp(prefix="edgellm-offload-"))
    model = _auto_class(task).from_pretrained(path, dtype=dtype, device_map=placement.accelerate_map,
                                              offload_folder=folder, use_safetensors=True)
    model.eval()
    tok = AutoTokenizer.from_pretrained(path) if _has_tokenizer(path) else None
    return model, tok, {"placement": placement.to_dict(), "offload_folder": folder}


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
