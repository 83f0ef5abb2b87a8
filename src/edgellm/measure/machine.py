"""What machine is this: CPU model, cores, ISA flags, RAM, GPU; measured bandwidth and matmul throughput.

Bandwidth is a STREAM-like copy (bytes read + bytes written, best of several repeats) of a
buffer far larger than the caches, on all threads torch uses. It is measured, not assumed,
because decode speed is bounded by it.
"""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache

import torch

ISA_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                   "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "i8mm", "dotprod")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in ISA_OF_INTEREST if f in flags]


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def ram_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gpu_info() -> list[dict]:
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_bytes": int(p.total_memory), "kind": "cuda"})
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        gpus.append({"name": "Apple MPS", "memory_bytes": None, "kind": "mps"})
    return gpus


@lru_cache(maxsize=None)
def measure_bandwidth(size_mb: int = 512, repeats: int = 8) -> float:
    """Memory bandwidth in GB/s from a multi-threaded copy of *size_mb* MB (read + write counted)."""
    n = size_mb * 1024 * 1024
    src = torch.ones(n, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch pages
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n / best / 1e9


@lru_cache(maxsize=None)
def measure_matmul(dtype_name: str = "float32", size: int = 1024, repeats: int = 5) -> float:
    """Matmul throughput in GFLOP/s (GOP/s for int8 via torch._int_mm) on the CPU."""
    if dtype_name == "int8":
        a = torch.randint(-127, 127, (size, size), dtype=torch.int8)
        b = torch.randint(-127, 127, (size, size), dtype=torch.int8)
        fn = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        dt = getattr(torch, dtype_name)
        a, b = torch.randn(size, size, dtype=dt), torch.randn(size, size, dtype=dt)
        fn = lambda: a @ b  # noqa: E731
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def machine_info(bandwidth: bool = True, matmul: bool = False) -> dict:
    """A dict describing this machine; measured figures are marked ``measured_*``."""
    info = {
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "isa_flags": isa_flags(),
        "ram_bytes": ram_bytes(),
        "gpus": gpu_info(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if bandwidth:
        info["measured_bandwidth_GBps"] = round(measure_bandwidth(), 2)
    if matmul:
        info["measured_fp32_gflops"] = round(measure_matmul("float32"), 1)
        try:
            info["measured_int8_gops"] = round(measure_matmul("int8"), 1)
        except RuntimeError:
            info["measured_int8_gops"] = None
    return info
