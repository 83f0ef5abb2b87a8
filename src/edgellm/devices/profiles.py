"""Device profiles: what a target device offers (memory, bandwidth, compute, runtimes), as YAML data.

A profile is a frozen ``DeviceProfile``; built-in ones live in ``devices/profiles/*.yaml`` and
users add their own YAML files (same fields). The host's profile is detected and measured by
``devices/detect.py``, and ``edgellm.devices.get_profile`` resolves either; every other profile's
figures come from datasheets, and its ``source:`` says which, so anything computed from them is a
*prediction*.

Bandwidth is the **sustained** figure (what a STREAM-like copy reaches), because the host's
bandwidth is measured that way and the cost model's efficiency factors are calibrated against it.
Deliberately absent: power, thermals, NPUs (no runtime here targets them).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgeLLMError
from ..fileio import read_yaml

PROFILE_DIR = Path(__file__).with_name("profiles")
KNOWN_RUNTIMES = ("torch", "llama.cpp", "onnxruntime", "executorch", "litert")
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: Any, what: str = "size") -> int:
    """Bytes from an int or a string such as ``"6GiB"``, ``"512 MB"``, ``"1.5G"``.

    >>> parse_size("1.5 GiB"), parse_size(1024), parse_size("8GB")
    (1610612736, 1024, 8000000000)
    """
    if isinstance(value, bool):
        raise EdgeLLMError(f"{what}: expected a size, got {value!r}", "write e.g. 6GiB or 512MB")
    if isinstance(value, (int, float)):
        if value < 0:
            raise EdgeLLMError(f"{what}: size must be ≥ 0 (got {value})", "write e.g. 6GiB")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise EdgeLLMError(f"{what}: cannot read size {value!r}", "write e.g. 6GiB, 512MB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_fraction(value: Any, what: str = "fraction") -> float:
    """A fraction from ``"10%"``, ``0.1`` or ``"0.1"``.

    >>> parse_fraction("10%"), parse_fraction(0.05)
    (0.1, 0.05)
    """
    try:
        s = str(value).strip()
        f = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise EdgeLLMError(f"{what}: cannot read {value!r} as a fraction", "write e.g. 10% or 0.1") from None
    if not 0 <= f < 10:
        raise EdgeLLMError(f"{what}: {value!r} is out of range", "write e.g. 10% or 0.1")
    return f


@dataclass(frozen=True)
class DeviceProfile:
    """One target device. Sizes in bytes, bandwidth in GB/s (sustained), compute in G(FL)OP/s.

    >>> p = get_profile("raspberry-pi-5-8gb")     # doctest: +SKIP
    >>> p.mem_bandwidth_GBps, p.runtimes          # doctest: +SKIP
    (10.2, ('llama.cpp', 'onnxruntime', 'executorch', 'torch'))
    """

    name: str
    ram_bytes_for_model: int
    storage_bytes: int
    mem_bandwidth_GBps: float
    runtimes: tuple[str, ...]
    source: str
    description: str = ""
    fp32_gflops: float | None = None
    fp16_gflops: float | None = None
    int8_gops: float | None = None
    threads: int | None = None
    min_decode_tok_s: float | None = None
    max_ttft_ms: float | None = None
    max_quality_loss: float | None = None
    measured: bool = False                        # True only for the detected host
    details: dict = field(default_factory=dict, compare=False)   # host: cpu model, ISA flags, GPUs

    def __post_init__(self):
        where = f"device profile '{self.name}'"
        if not self.name or not isinstance(self.name, str):
            raise EdgeLLMError(f"{where}: field 'name' must be a non-empty string", "add name: my-device")
        for f in ("ram_bytes_for_model", "storage_bytes"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise EdgeLLMError(f"{where}: field '{f}' must be a positive size (got {v!r})", "write e.g. 4GiB")
        for f in ("mem_bandwidth_GBps", "fp32_gflops", "fp16_gflops", "int8_gops", "min_decode_tok_s", "max_ttft_ms"):
            v = getattr(self, f)
            required = f == "mem_bandwidth_GBps"
            if v is None and not required:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise EdgeLLMError(f"{where}: field '{f}' must be a positive number (got {v!r})", "fix the value")
        if not (self.fp32_gflops or self.fp16_gflops or self.int8_gops):
            raise EdgeLLMError(f"{where}: give at least one of the fields fp32_gflops, fp16_gflops, int8_gops",
                               "add the device's compute throughput (prefill depends on it)")
        if not self.runtimes or any(r not in KNOWN_RUNTIMES for r in self.runtimes):
            bad = [r for r in self.runtimes if r not in KNOWN_RUNTIMES] or ["(empty)"]
            raise EdgeLLMError(f"{where}: field 'runtimes' has unknown runtime(s) {', '.join(bad)}",
                               f"use some of: {', '.join(KNOWN_RUNTIMES)}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise EdgeLLMError(f"{where}: field 'source' is missing", "say where the figures come from")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise EdgeLLMError(f"{where}: field 'threads' must be a positive integer", "fix the value")
        if self.max_quality_loss is not None and not 0 <= self.max_quality_loss < 10:
            raise EdgeLLMError(f"{where}: field 'max_quality_loss' out of range", "write e.g. 10%")

    @property
    def is_prediction(self) -> bool:
        """Figures for this device are predictions (everything but the measured host)."""
        return not self.measured

    def compute(self, kind: str) -> float | None:
        """Throughput in GFLOP/s (GOP/s) for *kind* in fp32/fp16/int8, falling back to fp32 then any."""
        order = {"int8": ("int8_gops", "fp32_gflops", "fp16_gflops"),
                 "fp16": ("fp16_gflops", "fp32_gflops", "int8_gops"),
                 "fp32": ("fp32_gflops", "fp16_gflops", "int8_gops")}[kind]
        return next((getattr(self, f) for f in order if getattr(self, f)), None)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["runtimes"] = list(self.runtimes)
        return d


_FIELDS = {f.name for f in dataclasses.fields(DeviceProfile)}
_REQUIRED = {f.name for f in dataclasses.fields(DeviceProfile)
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def profile_from_dict(d: dict, where: str) -> DeviceProfile:
    """A profile from a YAML mapping, naming any missing, unknown or invalid field."""
    if not isinstance(d, dict):
        raise EdgeLLMError(f"{where}: a device profile must be a YAML mapping", "see devices/profiles/*.yaml")
    unknown = sorted(set(d) - _FIELDS)
    if unknown:
        raise EdgeLLMError(f"{where}: unknown field(s) {', '.join(unknown)}", f"valid fields: {', '.join(sorted(_FIELDS))}")
    missing = sorted(_REQUIRED - set(d))
    if missing:
        raise EdgeLLMError(f"{where}: missing field(s) {', '.join(missing)}", "see devices/profiles/*.yaml for an example")
    d = dict(d)
    for f in ("ram_bytes_for_model", "storage_bytes"):
        d[f] = parse_size(d[f], f"{where}: field '{f}'")
    if d.get("max_quality_loss") is not None:
        d["max_quality_loss"] = parse_fraction(d["max_quality_loss"], f"{where}: field 'max_quality_loss'")
    rts = d["runtimes"]
    if isinstance(rts, str) or not isinstance(rts, (list, tuple)):
        raise EdgeLLMError(f"{where}: field 'runtimes' must be a list", "write runtimes: [llama.cpp, onnxruntime]")
    d["runtimes"] = tuple(str(r) for r in rts)
    d["source"] = str(d["source"]).strip() if d["source"] is not None else ""
    d.pop("measured", None)   # only detection may claim measured figures
    try:
        return DeviceProfile(**d)
    except TypeError as e:
        raise EdgeLLMError(f"{where}: invalid profile: {e}", "check the field types") from e


def load_profile(path: str | Path) -> DeviceProfile:
    """Read a profile YAML file.

    >>> load_profile("my-board.yaml").name        # doctest: +SKIP
    'my-board'
    """
    return profile_from_dict(read_yaml(path, "device profile"), str(path))


def builtin_profiles() -> dict[str, DeviceProfile]:
    """Every built-in profile by name (the YAML files shipped in ``devices/profiles``)."""
    out = {}
    for f in sorted(PROFILE_DIR.glob("*.yaml")):
        p = load_profile(f)
        out[p.name] = p
    return out
