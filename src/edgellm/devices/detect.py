"""Detect the host as a ``DeviceProfile``: cores, RAM, ISA flags, GPUs, and *measured* bandwidth and matmul.

Nothing about the host is assumed: bandwidth is a STREAM-like copy and compute is a timed fp32 matmul
(``edgellm.measure.machine``), on the thread count given (default: torch's). The runtimes listed are
the ones whose edgellm adapter and engine are both importable here. Deliberately absent: GPU
bandwidth/compute measurement (the host profile describes the CPU path the benchmarks use).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

from .profiles import KNOWN_RUNTIMES, DeviceProfile

# runtime -> (edgellm adapter module, engine module); torch is always present
_RUNTIME_MODULES = {
    "llama.cpp": ("edgellm.runtimes.llamacpp", "llama_cpp"),
    "onnxruntime": ("edgellm.runtimes.onnxrt", "onnxruntime"),
    "executorch": ("edgellm.runtimes.executorch", "executorch"),
    "litert": ("edgellm.runtimes.litert", "ai_edge_litert"),
}


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_runtimes() -> tuple[str, ...]:
    """Runtimes usable on this machine, in ``KNOWN_RUNTIMES`` order.

    >>> "torch" in available_runtimes()
    True
    """
    ok = {"torch"} | {rt for rt, mods in _RUNTIME_MODULES.items() if all(_importable(m) for m in mods)}
    return tuple(r for r in KNOWN_RUNTIMES if r in ok)


_CACHE: dict = {}


def detect_host(threads: int | None = None, storage_path: str | None = None) -> DeviceProfile:
    """The host as a measured profile: bandwidth and an fp32 matmul are timed (a few seconds, cached).

    >>> p = detect_host()                                # doctest: +SKIP
    >>> p.measured, p.mem_bandwidth_GBps > 0             # doctest: +SKIP
    (True, True)
    """
    import psutil
    import torch

    from ..measure.machine import machine_info, measure_matmul

    if threads in _CACHE:
        return _CACHE[threads]
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        info = machine_info(bandwidth=True)
        info["measured_fp32_gflops"] = round(measure_matmul("float32"), 1)
    finally:
        torch.set_num_threads(old)
    n_threads = threads or info["torch_threads"]
    gpus = ", ".join(g["name"] for g in info["gpus"]) or "none"
    profile = DeviceProfile(
        name="host", ram_bytes_for_model=int(psutil.virtual_memory().available),
        storage_bytes=int(shutil.disk_usage(storage_path or os.getcwd()).free),
        mem_bandwidth_GBps=float(info["measured_bandwidth_GBps"]), runtimes=available_runtimes(),
        source=(f"measured on this machine ({n_threads} threads): STREAM-like copy bandwidth and a timed "
                f"1024x1024 fp32 matmul; RAM for the model is what is available now. int8 throughput is not "
                f"measured: torch's CPU int8 matmul is a reference loop, not what llama.cpp's kernels reach"),
        description=f"{info['cpu_model']}, {info['logical_cores']} logical cores, GPU: {gpus}",
        fp32_gflops=float(info["measured_fp32_gflops"]),
        threads=n_threads, measured=True,
        details={k: info[k] for k in ("cpu_model", "machine", "logical_cores", "physical_cores", "isa_flags",
                                      "ram_bytes", "gpus", "torch")},
    )
    _CACHE[threads] = profile
    return profile
