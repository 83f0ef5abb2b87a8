"""Cost model: roofline physics on synthetic profiles, host calibration, estimated vs exact stats."""

from __future__ import annotations

import pytest

from edgellm.devices.costmodel import (Calibration, ModelStats, fit_decode, fit_decode_pooled, predict, prediction_error,
                                      roofline)
from edgellm.devices.profiles import DeviceProfile


def dev(name="synthetic", bw=10.0, fp32=100.0, measured=False) -> DeviceProfile:
    return DeviceProfile(name=name, ram_bytes_for_model=2**30, storage_bytes=2**32, mem_bandwidth_GBps=bw,
                         runtimes=("torch", "llama.cpp"), source="synthetic test profile", fp32_gflops=fp32,
                         measured=measured)


STATS = ModelStats(kind="fp32", weight_bytes_per_token=100_000_000, memory_bytes=120_000_000, file_bytes=120_000_000,
                   linear_macs=25_000_000, n_layers=4, attn_dim=256, kv_bytes_per_token=8192)


def test_uncalibrated_prediction_is_the_roofline():
    p = predict(STATS, dev(bw=10.0), "torch", prompt_len=128, new_tokens=128)
    assert p.decode_tok_s == pytest.approx(10e9 / 100e6)            # memory-bound: bandwidth / bytes per token
    assert p.bound == "memory" and not p.calibrated and p.predicted
    assert p.size_bytes == 120_000_000
    assert p.peak_ram_bytes == 120_000_000 + 8192 * 256           # weights + KV cache, no overhead known
    flops = sum(STATS.flops_per_token(i) for i in (0, 127)) / 2 * 128
    assert p.ttft_ms == pytest.approx(1e3 * max(flops / 100e9, 100e6 / 10e9))
    assert p.prefill_tok_s == pytest.approx(128 / (p.ttft_ms / 1e3))


def test_decode_scales_with_bandwidth_and_bytes():
    a = predict(STATS, dev(bw=10.0), "torch")
    b = predict(STATS, dev(bw=20.0), "torch")
    half = ModelStats(**{**STATS.to_dict(), "weight_bytes_per_token": 50_000_000})
    c = predict(half, dev(bw=10.0), "torch")
    assert b.decode_tok_s == pytest.approx(2 * a.decode_tok_s)
    assert c.decode_tok_s == pytest.approx(2 * a.decode_tok_s)


def test_compute_bound_when_compute_is_scarce():
    p = predict(STATS, dev(bw=1000.0, fp32=0.01), "torch")
    assert p.bound == "compute"
    assert p.decode_tok_s == pytest.approx(0.01e9 / STATS.flops_per_token(128))


def test_calibration_reproduces_the_host_measurement_and_transfers():
    host = dev("host", bw=20.0, fp32=50.0, measured=True)
    cal = Calibration()
    eff = cal.add("torch", STATS, host, decode_tok_s=50.0, prefill_tok_s=400.0, prompt_len=128,
                  peak_rss_bytes=500_000_000, context=256, label="m")
    assert eff["decode"] == pytest.approx(50.0 / 200.0)               # roofline 200 tok/s, measured 50
    p = predict(STATS, host, "torch", cal)
    assert p.calibrated and p.calibration == "torch|fp32"
    assert p.decode_tok_s == pytest.approx(50.0) and p.prefill_tok_s == pytest.approx(400.0)
    assert p.peak_ram_bytes == 500_000_000
    pi = predict(STATS, dev("pi", bw=10.0, fp32=25.0), "torch", cal)     # half the bandwidth and compute
    assert pi.decode_tok_s == pytest.approx(25.0) and pi.prefill_tok_s == pytest.approx(200.0) and pi.predicted
    other = predict(ModelStats(**{**STATS.to_dict(), "kind": "w8"}), host, "torch", cal)
    assert other.calibration == "torch|*"                             # falls back to the runtime's mean
    assert predict(STATS, host, "llama.cpp", cal).calibration == "none"
    assert cal.without("m").factors("torch", "fp32").source == "none"
    assert prediction_error(11.0, 10.0) == pytest.approx(0.1)


def test_two_parameter_decode_fit_separates_overhead_from_streaming():
    host = dev("host", bw=20.0, fp32=1e6, measured=True)             # memory-bound: roofline = bytes / 20 GB/s
    overhead, slope = 0.010, 1.25                                     # 10 ms per token + 80% of the bandwidth

    def sized(nbytes, kind):
        return ModelStats(**{**STATS.to_dict(), "weight_bytes_per_token": nbytes, "kind": kind})

    def measured(s):
        return 1.0 / (overhead + slope * s.weight_bytes_per_token / 20e9)

    cal = Calibration()
    for nbytes, kind in ((400_000_000, "fp32"), (100_000_000, "w8")):
        s = sized(nbytes, kind)
        cal.add("llama.cpp", s, host, measured(s), None, 128, None, 256, label=kind)
    eff = cal.factors("llama.cpp", "w4")
    assert eff.decode_fit == "fit of 2" and eff.source == "llama.cpp|*"
    assert eff.decode_overhead_layer_s * STATS.n_layers == pytest.approx(overhead)
    assert eff.decode == pytest.approx(1 / slope)
    w4 = sized(55_000_000, "w4")                                      # a third size is predicted exactly
    assert predict(w4, host, "llama.cpp", cal).decode_tok_s == pytest.approx(measured(w4))
    one = cal.without("fp32").factors("llama.cpp", "w8")              # one point: bandwidth prior, rest is overhead
    assert one.decode_fit == "1 point, bandwidth prior" and one.decode == 1.0
    w8 = sized(100_000_000, "w8")
    assert predict(w8, host, "llama.cpp", cal.without("fp32")).decode_tok_s == pytest.approx(measured(w8))
    slow = dev("slow", bw=10.0, fp32=0.5e6)                           # half the bandwidth and half the compute
    p = predict(w4, slow, "llama.cpp", cal)
    assert 1.0 / p.decode_tok_s == pytest.approx(2 * overhead + slope * 55e6 / 10e9)


def test_prefill_only_samples_leave_decode_uncalibrated():
    host = dev("host", bw=20.0, fp32=50.0, measured=True)
    cal = Calibration()
    cal.add("torch", STATS, host, decode_tok_s=None, prefill_tok_s=400.0, prompt_len=128, peak_rss_bytes=None,
            context=256, label="classifier")
    p = predict(STATS, host, "torch", cal)
    assert p.calibrated and p.decode_fit == "none"                   # prefill calibrated, decode still the bound
    assert p.decode_tok_s == pytest.approx(predict(STATS, host, "torch").decode_tok_s)


def test_fit_decode_stays_physical():
    assert fit_decode([]) == (0.0, 1.0, "none")
    o, s, how = fit_decode([(0.01, 0.02), (0.02, 0.05)])             # would need a negative overhead
    assert o == 0.0 and s > 0 and "no overhead" in how
    o, s, how = fit_decode([(0.01, 0.05), (0.02, 0.04)])             # more bytes, faster: not physical
    assert s == 1.0 and "prior" in how                              # overhead: the relative-error-weighted mean of t - r
    assert o == pytest.approx((0.04 / 0.05 ** 2 + 0.02 / 0.04 ** 2) / (1 / 0.05 ** 2 + 1 / 0.04 ** 2))
    assert fit_decode([(0.02, 0.01)]) == (0.0, 0.5, "1 point(s), faster than the roofline")


def test_roofline_prefill_never_beats_reading_the_weights():
    r = roofline(STATS, dev(bw=1.0, fp32=1e6), prompt_len=1)
    assert r["prefill_s"] == pytest.approx(100e6 / 1e9)


def test_estimated_stats_match_exact_ones(tiny_llama):
    from edgellm.devices.stats import estimate_stats, stats_from_model
    from edgellm.models import load, model_bytes
    from edgellm.pruning import PruneConfig
    from edgellm.recipe import Recipe
    from edgellm.runtimes.torch import TorchRuntime

    m = load(str(tiny_llama))
    rt = TorchRuntime(m, device="cpu")
    exact = stats_from_model(m.model, "fp32", rt.weight_bytes(), model_bytes(m.model), rt.file_bytes())
    est = estimate_stats(m.model, Recipe("fp32"), "torch")
    assert est.linear_macs == exact.linear_macs and est.kv_bytes_per_token == exact.kv_bytes_per_token
    assert est.weight_bytes_per_token == pytest.approx(exact.weight_bytes_per_token, rel=0.02)
    assert est.memory_bytes == pytest.approx(exact.memory_bytes, rel=0.02)
    depth = estimate_stats(m.model, Recipe("d", {"prune": PruneConfig(structure="depth", ratio=0.34)}), "torch")
    assert depth.n_layers == 2 and depth.weight_bytes_per_token < est.weight_bytes_per_token
    sparse = estimate_stats(m.model, Recipe("s", {"prune": PruneConfig(sparsity=0.5)}), "torch")
    assert sparse.file_bytes < est.file_bytes and sparse.weight_bytes_per_token == est.weight_bytes_per_token


def test_quantized_estimate_follows_the_bits(tiny_llama):
    from edgellm.devices.stats import estimate_stats
    from edgellm.models import load
    from edgellm.quantization import QuantConfig
    from edgellm.recipe import Recipe

    m = load(str(tiny_llama))
    fp = estimate_stats(m.model, Recipe("fp32"), "torch")
    w8 = estimate_stats(m.model, Recipe("w8", {"quantize": QuantConfig(bits=8, group_size=32)}), "torch")
    w4 = estimate_stats(m.model, Recipe("w4", {"quantize": QuantConfig(bits=4, group_size=32)}), "torch")
    assert fp.weight_bytes_per_token > w8.weight_bytes_per_token > w4.weight_bytes_per_token
    assert w4.kind == "w4" and w8.kind == "w8"
    q4 = estimate_stats(m.model, Recipe("w4", {"quantize": QuantConfig(bits=4, group_size=32)}), "llama.cpp")
    assert q4.kv_bytes_per_token == fp.kv_bytes_per_token // 2          # f16 KV cache in llama.cpp


def test_pooled_fit_shares_the_stream_and_keeps_each_runtime_overhead():
    """Two runtimes, one stream speed: a runtime measured at one size borrows the slope the other shows."""
    slope, over = 1.3, {"a": 0.050, "b": 0.008}
    sizes = {"a": (0.030, 0.012, 0.010), "b": (0.008,)}
    fit = fit_decode_pooled({g: [(r, over[g] + slope * r) for r in rs] for g, rs in sizes.items()})
    for g in over:
        assert fit[g][0] == pytest.approx(over[g]) and fit[g][1] == pytest.approx(slope)
    assert fit["b"][2] == "fit of 1 + slope shared with 1 runtime" and fit["a"][2] == "fit of 3"
    alone = fit_decode([(0.008, over["b"] + slope * 0.008)])          # b by itself falls back on the prior
    assert alone[1] == 1.0 and "prior" in alone[2]


def test_calibration_predicts_an_unmeasured_size_from_the_shared_slope():
    host = dev("host", bw=20.0, fp32=1e6, measured=True)
    slope, over = 1.25, {"torch": 0.040, "llama.cpp": 0.006}

    def sized(nbytes, kind):
        return ModelStats(**{**STATS.to_dict(), "weight_bytes_per_token": nbytes, "kind": kind})

    def tok_s(rt, s):
        return 1.0 / (over[rt] + slope * s.weight_bytes_per_token / 20e9)

    cal = Calibration()
    for rt, nbytes, kind in (("torch", 500_000_000, "fp32"), ("torch", 150_000_000, "w8"), ("llama.cpp", 90_000_000, "q4_0")):
        s = sized(nbytes, kind)
        cal.add(rt, s, host, tok_s(rt, s), None, 128, None, 256, label=f"{rt}-{kind}")
    f32 = sized(500_000_000, "fp32")                                  # llama.cpp fp32 was never measured
    p = predict(f32, host, "llama.cpp", cal)
    assert p.decode_tok_s == pytest.approx(tok_s("llama.cpp", f32)) and "shared" in p.decode_fit


def test_decode_overhead_counts_per_layer():
    """A depth-pruned child is predicted from its parent's calibration with its own, smaller overhead."""
    host = dev("host", bw=20.0, fp32=1e6, measured=True)
    per_layer, slope = 0.002, 1.25                                    # 2 ms per layer per token + 80% of the bandwidth

    def model(layers, nbytes, kind):
        return ModelStats(**{**STATS.to_dict(), "n_layers": layers, "weight_bytes_per_token": nbytes, "kind": kind})

    def measured(s):
        return 1.0 / (per_layer * s.n_layers + slope * s.weight_bytes_per_token / 20e9)

    cal = Calibration()
    for nbytes, kind in ((400_000_000, "fp32"), (100_000_000, "w8")):
        s = model(8, nbytes, kind)
        cal.add("llama.cpp", s, host, measured(s), None, 128, None, 256, label=kind)
    child = model(6, 300_000_000, "fp32")                             # 2 of 8 layers removed
    assert predict(child, host, "llama.cpp", cal).decode_tok_s == pytest.approx(measured(child))
    assert cal.factors("llama.cpp", "fp32").decode_overhead_layer_s == pytest.approx(per_layer)
