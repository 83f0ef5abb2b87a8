"""The cost model: size, peak RAM, prefill tok/s, TTFT and decode tok/s of a model on a device and runtime.

Physics first (docs/design.md §5): a decoded token reads every weight once, so decode time is
``bytes_per_token / bandwidth``, unless compute is slower (``flops_per_token / throughput``);
prefill is compute-bound (``prompt × flops_per_token / throughput``). These rooflines are what a
perfect runtime would reach. Real runtimes are slower, differently per runtime, so the model is
*calibrated by measurement on the host*:

- **decode** is ``t = layers × overhead + roofline / efficiency``: a per-token cost per runtime
  and decoder layer (op dispatch, norms, attention over the cache, dequantization set-up; it does
  not shrink with the weights, but it does with the layers) plus the weight stream at a fraction
  of the bandwidth. Counting the overhead per layer is what lets a depth-pruned model be predicted
  from its parent: held to a constant, it underpredicted depth25's speed-up by 13-26%. The stream's efficiency is the
  machine's, so it is fitted once across all runtimes (``fit_decode_pooled``) from the runtimes
  measured at two or more sizes; each runtime's overhead is the rest. Without two sizes anywhere,
  the stream is assumed to run at the measured bandwidth (efficiency 1). Per-runtime slopes were
  tried first: a runtime measured at 8 and 4 bits only (times that barely move with bytes, the
  kernels being dequantization-bound) then extrapolated its fp32 row 31-38% off. A
  single multiplicative efficiency cannot do this: it predicted llama.cpp Q8_0 from F16 at +46%,
  because halving the bytes does not halve a time that is half overhead. On another device the
  overhead is scaled by the ratio of fp32 throughputs (it is compute), the stream by bandwidth.
- **prefill** keeps one efficiency = roofline time / measured time, per ``runtime|kind``.
- **peak RAM** is weights in memory + KV cache + the runtime's own overhead, also calibrated on the
  host (peak RSS − weights − KV cache − the measuring harness: the RSS of a process that has
  imported the runtime but loaded no model). The harness (Python, torch) is added back for the
  host only: on a device the runtime is deployed natively.

Without a calibration for a runtime, predictions use efficiency 1 and overhead 0: an optimistic
bound, flagged ``calibrated=False`` (good for dropping candidates that cannot fit even in the best
case, not for promising anything). Figures for any device other than the measured host are
predictions (``Prediction.predicted``). Deliberately absent: thermal throttling, caches large
enough to hold a model, batching, and speculative decoding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..fileio import write_json
from .profiles import DeviceProfile


@dataclass(frozen=True)
class ModelStats:
    """What the cost model needs to know about one model as one runtime runs it.

    >>> s = ModelStats(kind="fp32", weight_bytes_per_token=4_000_000, memory_bytes=4_400_000,
    ...                file_bytes=4_400_000, linear_macs=1_000_000, n_layers=2, attn_dim=64,
    ...                kv_bytes_per_token=1024)
    >>> s.flops_per_token(ctx=0)
    2000000
    """

    kind: str                       # kernel family ("fp32", "w8", "w4", "w4a8", "sparse", "q4_0" ...)
    weight_bytes_per_token: int     # weights read per decoded token
    memory_bytes: int               # weights resident in memory
    file_bytes: int                 # artifact on disk
    linear_macs: int                # multiply-accumulates per token in linear layers (lm_head included)
    n_layers: int
    attn_dim: int                   # query heads × head dim (attention MACs per token per context position)
    kv_bytes_per_token: int         # KV cache bytes per position (0 for encoders)

    def flops_per_token(self, ctx: int) -> int:
        """FLOPs to process one token that attends to *ctx* earlier positions."""
        return 2 * self.linear_macs + 4 * self.n_layers * self.attn_dim * ctx

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prediction:
    """Predicted figures; ``predicted`` is False only for host figures that were measured."""

    device: str
    runtime: str
    size_bytes: int
    peak_ram_bytes: int
    prefill_tok_s: float
    ttft_ms: float
    decode_tok_s: float
    calibrated: bool                # efficiencies came from host measurements (else optimistic bounds)
    calibration: str                # which measurement calibrated it ("torch|fp32", "torch|*", "none")
    predicted: bool = True
    bound: str = "memory"           # what limits decode: "memory" or "compute"
    decode_fit: str = "none"        # how decode was calibrated ("fit of N", "1 point, bandwidth prior", "none")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Efficiency:
    decode: float          # roofline decode time / (measured decode time − per-token overhead)
    prefill: float         # roofline prefill time / measured prefill time
    overhead_bytes: int    # measured peak RSS − weights − KV cache − harness
    source: str
    harness_bytes: int = 0  # RSS of the measuring process before any model (host only)
    decode_overhead_layer_s: float = 0.0  # per-token overhead on the host, seconds per decoder layer
    host_gflops: float = 0.0        # the host's fp32 throughput, to scale the overhead to another device
    decode_fit: str = "none"        # how decode was calibrated: "fit of N", "1 point, bandwidth prior", "none"


def fit_decode(points: list[tuple[float, float]]) -> tuple[float, float, str]:
    """Fit ``t = overhead + slope · roofline`` to one runtime's (roofline s, measured s) pairs.

    The single-runtime case of ``fit_decode_pooled``; returns (overhead, slope, how).

    >>> fit_decode([(0.01, 0.03), (0.02, 0.04)])
    (0.02, 1.0, 'fit of 2')
    >>> fit_decode([(0.01, 0.03)])
    (0.02, 1.0, '1 point, bandwidth prior')
    """
    return fit_decode_pooled({"": points}).get("", (0.0, 1.0, "none"))


def fit_decode_pooled(groups: dict[str, list[tuple[float, float]]]) -> dict[str, tuple[float, float, str]]:
    """Fit ``t = overhead[runtime] + slope · roofline`` to every runtime's (roofline s, measured s) pairs at once.

    The weight stream is the machine's (memory reads run at one speed whichever runtime issues
    them), so *slope* is shared; the fixed per-token cost is the runtime's own. Least squares on
    relative error (weights 1/t²), the slope from the spread of sizes within each runtime. This lets
    a runtime measured at quantized sizes only, whose times barely move with bytes, still predict
    its fp32 row from the slope the other runtimes show. Kept physical: a runtime whose overhead
    would be negative gets a line through the origin; without two sizes anywhere the slope is 1
    (the measured bandwidth, the prior) and the rest is overhead. Returns {runtime: (overhead, slope, how)}.

    >>> fit = fit_decode_pooled({"a": [(0.01, 0.03), (0.02, 0.04)], "b": [(0.01, 0.02)]})
    >>> fit["b"]
    (0.01, 1.0, 'fit of 1 + slope shared with 1 runtime')
    """
    pts = {g: [(r, t) for r, t in ps if r and t and r > 0 and t > 0] for g, ps in groups.items()}
    pts = {g: ps for g, ps in pts.items() if ps}
    num = den = 0.0
    means, spread = {}, set()
    for g, ps in pts.items():
        w = [1.0 / (t * t) for _, t in ps]
        W = sum(w)
        rb, tb = sum(wi * r for wi, (r, _) in zip(w, ps)) / W, sum(wi * t for wi, (_, t) in zip(w, ps)) / W
        means[g] = (rb, tb)
        d = sum(wi * (r - rb) ** 2 for wi, (r, _) in zip(w, ps))
        if d > 1e-9 * rb * rb * W:
            spread.add(g)
            num += sum(wi * (t - tb) * (r - rb) for wi, (r, t) in zip(w, ps))
            den += d
    fitted = bool(spread) and num > 0
    slope = num / den if fitted else 1.0
    out = {}
    for g, ps in pts.items():
        rb, tb = means[g]
        n = len(ps)
        overhead = tb - slope * rb
        if fitted:
            others = len(spread - {g})
            how = f"fit of {n}" + (f" + slope shared with {others} runtime{'s' if others > 1 else ''}" if others else "")
        else:
            how = "1 point, bandwidth prior" if n == 1 else f"{n} points, bandwidth prior"
        if overhead >= 0:
            out[g] = (round(overhead, 9), round(slope, 9), how)
        elif fitted:                                     # negative overhead: this runtime's line through the origin
            out[g] = (0.0, round(sum(r / t for r, t in ps) / sum((r / t) ** 2 for r, t in ps), 9),
                      f"fit of {n}, no overhead")
        else:
            out[g] = (0.0, round(tb / rb, 9), f"{n} point(s), faster than the roofline")
    return out


@dataclass
class Calibration:
    """Efficiency factors per ``runtime|kind``, each the geometric mean of its host measurements.

    >>> c = Calibration()
    >>> c.factors("torch", "fp32").source
    'none'
    """

    samples: dict[str, list[dict]] = field(default_factory=dict)

    def add(self, runtime: str, stats: ModelStats, host: DeviceProfile, decode_tok_s: float | None,
            prefill_tok_s: float | None, prompt_len: int, peak_rss_bytes: int | None, context: int,
            label: str = "", harness_bytes: int = 0) -> dict:
        """Record one host measurement (named *label*); returns the efficiencies it implies."""
        roof = roofline(stats, host, prompt_len)
        sample = {
            "decode": roof["decode_s"] * decode_tok_s if decode_tok_s else None,
            "roof_decode_s": roof["decode_s"], "decode_s": 1.0 / decode_tok_s if decode_tok_s else None,
            "host_gflops": host.compute("fp32") or 0.0, "layers": _layers(stats),
            "prefill": roof["prefill_s"] / (prompt_len / prefill_tok_s) if prefill_tok_s else None,
            "overhead_bytes": (max(0, peak_rss_bytes - harness_bytes - stats.memory_bytes
                                   - stats.kv_bytes_per_token * context) if peak_rss_bytes else None),
            "harness_bytes": harness_bytes if peak_rss_bytes else None,
            "label": label,
        }
        if label:                                        # a re-measurement replaces the earlier one
            for rows in self.samples.values():
                rows[:] = [r for r in rows if r.get("label") != label]
        self.samples.setdefault(f"{runtime}|{stats.kind}", []).append(sample)
        return sample

    def factors(self, runtime: str, kind: str) -> Efficiency:
        """Calibration for *runtime* running *kind*.

        Decode: the two-parameter fit over every measurement of the runtime (all kinds: they differ
        in bytes per token, which is what separates overhead from streaming). Prefill and RAM: the
        exact ``runtime|kind`` key, else the runtime's mean, else none.
        """
        everything = [r for k, v in self.samples.items() if k.startswith(f"{runtime}|") for r in v]
        for key, rows in ((f"{runtime}|{kind}", self.samples.get(f"{runtime}|{kind}")), (f"{runtime}|*", everything)):
            if rows:
                groups: dict[str, list] = {}               # per layer: t / L = overhead + slope · roofline / L
                for k, v in self.samples.items():
                    groups.setdefault(k.split("|")[0], []).extend(
                        (_per_layer(r, "roof_decode_s"), _per_layer(r, "decode_s")) for r in v)
                overhead, slope, how = fit_decode_pooled(groups).get(runtime, (0.0, 1.0, "none"))
                return Efficiency(decode=1.0 / slope, prefill=_gmean(r["prefill"] for r in rows) or 1.0,
                                  overhead_bytes=int(_mean(r["overhead_bytes"] for r in rows) or 0), source=key,
                                  harness_bytes=int(_mean(r.get("harness_bytes") for r in rows) or 0),
                                  decode_overhead_layer_s=overhead, decode_fit=how,
                                  host_gflops=_mean(r.get("host_gflops") for r in everything) or 0.0)
        return Efficiency(decode=1.0, prefill=1.0, overhead_bytes=0, source="none")

    def without(self, label: str) -> "Calibration":
        """A copy without the measurements named *label* (for leave-one-out prediction errors)."""
        return Calibration({k: [r for r in v if r.get("label") != label] for k, v in self.samples.items()})

    def to_dict(self) -> dict:
        return {k: {"n": len(v), **asdict(self.factors(*k.split("|")))} for k, v in self.samples.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(samples={k: list(v) for k, v in d.items()})

    def save(self, path, host: dict) -> None:
        """Keep the raw samples for later runs on the same host (``load``); written atomically."""
        write_json(path, {"format": FORMAT, "host": host, "samples": self.samples})

    @classmethod
    def load(cls, path, host: dict) -> "Calibration":
        """Samples saved by earlier runs on this same *host*; empty when absent, unreadable or another host's."""
        import json
        from pathlib import Path

        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("host") != host:
            return cls()
        return cls(samples={k: list(v) for k, v in d.get("samples", {}).items() if isinstance(v, list)})


FORMAT = "edgellm-calibration/2"     # /2: samples carry their model's layer count (per-layer decode overhead)


def _layers(stats: ModelStats) -> int:
    return max(1, stats.n_layers)


def _per_layer(sample: dict, key: str) -> float | None:
    v = sample.get(key)
    return v / sample.get("layers", 1) if v else v


def _gmean(values) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def roofline(stats: ModelStats, device: DeviceProfile, prompt_len: int) -> dict:
    """Best-case seconds per decoded token and for the prefill of *prompt_len* tokens on *device*."""
    bw = device.mem_bandwidth_GBps * 1e9
    compute = (device.compute("fp32") or 0) * 1e9
    mem_s = stats.weight_bytes_per_token / bw
    comp_s = stats.flops_per_token(prompt_len) / compute if compute else 0.0
    prefill_flops = sum(stats.flops_per_token(i) for i in (0, prompt_len - 1)) / 2 * prompt_len  # mean ctx
    prefill_s = max(prefill_flops / compute if compute else 0.0, mem_s)
    return {"decode_s": max(mem_s, comp_s), "prefill_s": prefill_s, "bound": "memory" if mem_s >= comp_s else "compute"}


def predict(stats: ModelStats, device: DeviceProfile, runtime: str, calibration: Calibration | None = None,
            prompt_len: int = 128, new_tokens: int = 128) -> Prediction:
    """Predict size, peak RAM, prefill tok/s, TTFT and decode tok/s of *stats* on *device* with *runtime*.

    >>> p = predict(stats, get_profile("raspberry-pi-5-8gb"), "llama.cpp", calib)   # doctest: +SKIP
    >>> p.predicted, round(p.decode_tok_s)                                         # doctest: +SKIP
    (True, 31)
    """
    eff = (calibration or Calibration()).factors(runtime, stats.kind)
    roof = roofline(stats, device, prompt_len)
    device_gflops = device.compute("fp32") or 0.0
    scale = eff.host_gflops / device_gflops if eff.host_gflops and device_gflops else 1.0
    decode_s = eff.decode_overhead_layer_s * _layers(stats) * scale + roof["decode_s"] / eff.decode
    prefill_s = roof["prefill_s"] / eff.prefill
    context = prompt_len + new_tokens
    return Prediction(
        device=device.name, runtime=runtime, size_bytes=stats.file_bytes,
        peak_ram_bytes=stats.memory_bytes + stats.kv_bytes_per_token * context + eff.overhead_bytes
        + (eff.harness_bytes if device.measured else 0),
        prefill_tok_s=prompt_len / prefill_s, ttft_ms=prefill_s * 1e3, decode_tok_s=1.0 / decode_s,
        calibrated=eff.source != "none", calibration=eff.source, bound=roof["bound"], decode_fit=eff.decode_fit,
    )


def prediction_error(predicted: float, measured: float) -> float:
    """Relative error of a prediction against a measurement: (predicted − measured) / measured.

    >>> prediction_error(11.0, 10.0)
    0.1
    """
    return round((predicted - measured) / measured, 6)
