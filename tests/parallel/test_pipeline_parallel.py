"""Pipeline parallelism: stages chain exactly; spawned 2-process gloo runs give the single-process
tokens and logits; bad world sizes and missing ranks end in clear errors, not hangs."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from edgellm.errors import EdgeLLMError
from edgellm.models import load
from edgellm.parallel.launch import launch_local
from edgellm.parallel.stage import load_stage, plan_stages
from edgellm.runtimes.torch import TorchRuntime


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _assert_chain_matches(stages, full) -> None:
    """Prefill and one decode step through every rank's own cache equal the full model, bit for bit."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    caches = [s.new_cache() for s in stages]
    x = ids
    for s, c in zip(stages, caches):
        x = s.forward(x, c)
    with torch.no_grad():
        out = full(ids, use_cache=True)
    assert torch.equal(x, out.logits)
    nxt = x[:, -1].argmax(-1, keepdim=True)
    for s, c in zip(stages, caches):     # one decode step through every rank's own cache
        nxt = s.forward(nxt, c, logits_to_keep=1)
    with torch.no_grad():
        ref = full(out.logits[:, -1].argmax(-1, keepdim=True), cache=out.past_key_values, use_cache=True)
    assert torch.equal(nxt[:, -1], ref.logits[:, -1])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_stages_chain_to_the_full_model(tiny_llama, one_thread, world):
    full = load(tiny_llama).model
    stages = [load_stage(tiny_llama, r, world) for r in range(world)]
    assert [s.layers for s in stages] == plan_stages(tiny_llama, world)[0]
    assert sorted(i for s in stages for i in s.layers) == [0, 1, 2]
    _assert_chain_matches(stages, full)


@pytest.mark.parametrize("family", ["mistral", "gemma"])
def test_other_families_chain_to_the_full_model(family, tmp_path, one_thread):
    """Mistral (untied head on the last rank) and Gemma (its √hidden embedding scale runs on rank 0 only)."""
    from conftest import make_tiny_decoder

    src = make_tiny_decoder(tmp_path / family, family)
    full = load(src).model
    stages = [load_stage(src, r, 2) for r in range(2)]
    assert [s.layers for s in stages] == [range(0, 1), range(1, 2)]
    _assert_chain_matches(stages, full)


def test_two_process_gloo_matches_single_process(tiny_llama, tmp_path, one_thread):
    logits_file = tmp_path / "logits.safetensors"
    r = launch_local(["generate", str(tiny_llama), "--prompt-seeds", "12", "--batch", "4", "--micro-batches", "4",
                      "--new-tokens", "10", "--logits-out", str(logits_file), "--timeout", "60"],
                     nproc=2, threads=1, timeout_s=300)
    assert r["world_size"] == 2 and r["backend"] == "gloo"
    assert [x["layers"] for x in r["ranks"]] == [[s.start, s.stop] for s in plan_stages(tiny_llama, 2)[0]]
    prompts = torch.tensor(r["prompts"])
    assert prompts.shape == (4, 12) and len({tuple(p) for p in prompts.tolist()}) == 4
    rt = TorchRuntime.open(tiny_llama, device="cpu", threads=1)
    want = [list(rt.generate(p, 10)) for p in prompts]
    assert r["tokens"] == want
    with torch.no_grad():
        ref = rt.model(prompts).logits
    assert torch.equal(load_file(logits_file)["logits"], ref)


def test_world_larger_than_layers_is_a_clean_error(tiny_llama, monkeypatch, capsys):
    from edgellm.parallel.__main__ import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    t0 = time.monotonic()
    assert main(["generate", str(tiny_llama), "--prompt-ids", "1,2,3"]) == 2
    err = capsys.readouterr().err
    assert "world size 4 is larger than the model's 3 decoder layers" in err
    assert time.monotonic() - t0 < 30          # refused before any connection attempt


@pytest.mark.parametrize("rank", [0, 1])
def test_missing_rank_times_out_with_a_message(monkeypatch, rank):
    """Rank 0 alone waits for clients; rank 1 alone finds no server: both end in an error after the timeout."""
    from edgellm.parallel.launch import free_port
    from edgellm.parallel.pipeline import init_distributed

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    t0 = time.monotonic()
    with pytest.raises(EdgeLLMError, match=f"rank {rank} of 2 could not connect to the other ranks .* within 2 s"):
        init_distributed(rank, 2, "gloo", timeout_s=2)
    assert time.monotonic() - t0 < 30
    assert not torch.distributed.is_initialized()


def test_bench_pipeline_cli(tiny_llama, tmp_path):
    out = tmp_path / "b.json"
    code, text, err = run_cli("bench", tiny_llama, "--pipeline", "2", "--threads", "2", "--prompt-len", "8",
                              "--new-tokens", "4", "--runs", "1", "--warmup", "0", "--batch", "2",
                              "--micro-batches", "1,2", "--json", out)
    assert code == 0, err
    r = json.loads(out.read_text())
    assert [x["rank"] for x in r["ranks"]] == [0, 1] and all(x["peak_rss_bytes"] > 0 for x in r["ranks"])
    assert r["speed"]["decode_tok_s"]["median"] > 0
    assert [b["micro_batches"] for b in r["batch"]] == [1, 2] and all(b["throughput_tok_s"]["median"] > 0 for b in r["batch"])
    assert "pipeline x2" in text
