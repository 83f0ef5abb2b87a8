import pytest

from conftest import run_cli
import time

from edgellm.measure import BenchConfig, BenchResult, bench, machine_info, measure_paired, measure_speed
from edgellm.errors import EdgeLLMError
from edgellm.runtimes import open_runtime


def test_measure_speed_fields(tiny_llama):
    rt = open_runtime(tiny_llama, threads=1)
    r = measure_speed(rt, prompt_len=16, new_tokens=8, runs=5, warmup=1)
    assert r.runs == 5 and r.prompt_tokens == 16 and r.new_tokens == 8
    assert 0 < r.decode_tok_s.min <= r.decode_tok_s.median <= r.decode_tok_s.max
    assert r.ttft_ms.median > 0 and r.weight_bytes > 0


class _Slowed:
    """A runtime that sleeps *delay* seconds before every token and logs when it is called."""

    def __init__(self, inner, calls, label, delay):
        self.inner, self.calls, self.label, self.delay, self.name = inner, calls, label, delay, inner.name
        self.vocab_size = inner.model.config.vocab_size

    def generate(self, prompt, new_tokens, temperature=0.0):
        self.calls.append(self.label)
        for tok in self.inner.generate(prompt, new_tokens, temperature=temperature):
            time.sleep(self.delay)
            yield tok


def test_measure_paired_alternates_and_finds_the_slower(tiny_llama):
    calls = []
    fast = _Slowed(open_runtime(tiny_llama, threads=1), calls, "fast", 0.0)
    slow = _Slowed(open_runtime(tiny_llama, threads=1), calls, "slow", 0.005)
    r = measure_paired({"fast": fast, "slow": slow}, rounds=4, prompt_len=8, new_tokens=6, warmup=1)
    assert len(r["runs"]["fast"]["decode"]) == len(r["runs"]["slow"]["decode"]) == 4
    dec = r["ratios"]["slow"]["decode"]
    assert len(dec["per_round"]) == 4 and dec["q1"] <= dec["median"] <= dec["q3"]
    assert dec["median"] < 0.8                      # 5 ms a token on a model that decodes in well under 1 ms
    assert calls == ["fast", "slow"] + ["fast", "slow", "slow", "fast"] * 2   # warm-ups, then flipped rounds
    with pytest.raises(EdgeLLMError, match="two runtimes"):
        measure_paired({"fast": fast}, rounds=2)


def test_speed_rejects_too_long(tiny_llama):
    rt = open_runtime(tiny_llama)
    with pytest.raises(EdgeLLMError, match="positions"):
        measure_speed(rt, prompt_len=200, new_tokens=100)


def test_bench_subprocess_reports_rss(tiny_llama):
    r = bench(str(tiny_llama), BenchConfig(prompt_len=16, new_tokens=8, runs=5), threads=1)
    assert isinstance(r, BenchResult) and r.speed.runs == 5 and r.speed.new_tokens == 8
    assert r.peak_rss_bytes > 50e6  # python + torch at least
    assert r.file_bytes > 0 and 0 < r.bandwidth_utilisation < 1
    assert r.machine["measured_bandwidth_GBps"] > 0.5
    assert r.to_dict()["speed"]["decode_tok_s"]["median"] == r.speed.decode_tok_s.median


def test_bench_config_and_keywords_are_checked():
    with pytest.raises(EdgeLLMError, match="new_tokens"):
        BenchConfig(new_tokens=1)
    with pytest.raises(EdgeLLMError, match="unknown option"):
        bench("any", rounds=3)


def test_bench_subprocess_error_is_clean(tmp_path):
    with pytest.raises(EdgeLLMError, match="does not exist"):
        bench(str(tmp_path / "missing"), runs=1, machine=False)


def test_machine_info():
    m = machine_info(bandwidth=False)
    assert m["logical_cores"] >= 1 and m["ram_bytes"] > 1e8 and isinstance(m["isa_flags"], list)


def test_cli_bench(tiny_llama, tmp_path):
    code, out, _ = run_cli("bench", tiny_llama, "--threads", 1, "--prompt-len", 16, "--new-tokens", 8,
                           "--json", tmp_path / "b.json")
    assert code == 0 and "decode tok/s" in out and "measured bandwidth" in out
    import json

    data = json.loads((tmp_path / "b.json").read_text())      # the keys the JSON has always had
    assert {"spec", "source_path", "runtime", "threads", "device", "load_seconds", "file_bytes", "param_bytes",
            "n_params", "speed", "peak_rss_bytes", "machine", "bandwidth_utilisation"} == set(data)
    assert data["speed"]["prompt_tokens"] == 16


@pytest.mark.slow
def test_bench_smollm2_runs():
    r = bench("smollm2-135m", BenchConfig(prompt_len=32, new_tokens=16, runs=5), threads=2)
    assert r.speed.decode_tok_s.median > 1
    assert r.peak_rss_bytes > r.param_bytes * 0.9
