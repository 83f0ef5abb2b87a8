"""Memory-budgeted placement: budgets parse, maps respect them, offloaded loads give in-memory logits."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch

from conftest import run_cli
from edgellm.errors import EdgeLLMError
from edgellm.models import load
from edgellm.parallel.placement import plan_placement, split_layers
from edgellm.placed import device_key, device_name, format_budget, parse_max_memory, parse_size, plain_folder


def test_parse_max_memory():
    assert parse_max_memory("cpu=2GiB,cuda:0=4GiB,disk") == ({"cpu": 2 * 2**30, 0: 4 * 2**30}, True)
    assert parse_max_memory({"cpu": "1MB"}) == ({"cpu": 10**6}, False)
    assert parse_size("1.5KiB") == 1536
    assert [device_key(n) for n in ("cuda:1", "GPU", " cpu ")] == [1, 0, "cpu"]
    assert device_name(1) == "cuda:1" and device_name("disk") == "disk"
    assert format_budget(*parse_max_memory("cpu=1GiB,cuda:0=2GiB,disk")) == "cpu=1.0 GiB,cuda:0=2.0 GiB,disk"
    for bad in ("cpu=lots", "tpu=1GiB", "cpu", "disk", "cpu=1GiB,cpu=2GiB"):
        with pytest.raises(EdgeLLMError):
            parse_max_memory(bad)


@pytest.mark.parametrize("budget", ["cpu=700KiB,disk", "cpu=900KiB,disk", "cpu=10MiB", "cpu=400KiB,disk"])
def test_plan_respects_budgets(tiny_llama, budget):
    p = plan_placement(tiny_llama, budget)
    assert sum(p.bytes_per_device.values()) == p.total_bytes > 0
    for dev, used in p.bytes_per_device.items():
        if dev != "disk":
            assert used <= p.budgets[dev], (dev, used, p.budgets)
    if "disk" in p.bytes_per_device:   # offloading keeps room to stream the largest block in
        assert p.bytes_per_device.get("cpu", 0) + p.largest_block_bytes <= p.budgets["cpu"]


def test_plan_gpu_budget_fills_gpu_first(tiny_llama):
    p = plan_placement(tiny_llama, "cpu=10MiB,cuda:0=500KiB")   # planning needs no GPU
    assert p.device_map.get("model.embed_tokens") == "cuda:0"
    assert p.bytes_per_device["cuda:0"] <= 500 * 1024
    assert p.bytes_per_device["cuda:0"] + p.bytes_per_device["cpu"] == p.total_bytes


def test_budget_too_small_states_bytes(tiny_llama):
    total = plan_placement(tiny_llama, "cpu=1GiB").total_bytes
    with pytest.raises(EdgeLLMError, match=f"needs {total} bytes"):
        plan_placement(tiny_llama, "cpu=700KiB")
    code, _, err = run_cli("plan", tiny_llama, "--max-memory", "cpu=100KiB")
    assert code == 2 and f"needs {total} bytes" in err and "Traceback" not in err


def test_plan_cli(tiny_llama, tmp_path):
    code, out, _ = run_cli("plan", tiny_llama, "--max-memory", "cpu=700KiB,disk", "--pipeline", "2",
                           "--json", tmp_path / "plan.json")
    assert code == 0 and "disk" in out and "model.layers" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [r["layers"] for r in plan["pipeline"]] in ([[0, 2], [2, 3]], [[0, 1], [1, 3]])


def test_split_layers_is_optimal_and_contiguous():
    sizes = [5, 9, 2, 7, 7, 3]
    for world in range(1, 7):
        for first, last in ((0, 0), (11, 4)):
            got = split_layers(sizes, world, first, last)
            assert [i for r in got for i in r] == list(range(len(sizes))) and all(len(r) for r in got)

            def worst(bounds):
                return max(sum(sizes[i] for i in r) + (first if k == 0 else 0) + (last if k == world - 1 else 0)
                           for k, r in enumerate(bounds))
            best = min(worst([range(a, b) for a, b in zip((0,) + cuts, cuts + (len(sizes),))])
                       for cuts in itertools.combinations(range(1, len(sizes)), world - 1))
            assert worst(got) == best
    with pytest.raises(EdgeLLMError, match="larger than the model's 6 decoder layers"):
        split_layers(sizes, 7)


def test_offloaded_load_equals_in_memory(tiny_llama, tmp_path):
    ids = torch.tensor([[5, 17, 33, 2, 90, 41, 7, 8]])
    ref = load(tiny_llama)
    with torch.no_grad():
        want = ref.model(ids).logits
    for budget in ("cpu=700KiB,disk", "cpu=10MiB"):
        placed = load(tiny_llama, max_memory=budget, offload_folder=tmp_path / budget.replace(",", "_"))
        if "disk" in budget:
            assert set(placed.model.hf_device_map.values()) == {"cpu", "disk"}
        else:   # one device: a plain in-memory model
            assert {p.device.type for p in placed.model.parameters()} == {"cpu"}
        with torch.no_grad():
            got = placed.model(ids).logits
        assert torch.equal(got, want)
    with pytest.raises(EdgeLLMError, match="needs"):
        load(tiny_llama, max_memory="cpu=100KiB")


def test_eval_runs_on_a_placed_model(tiny_llama, text_file):
    args = ("eval", tiny_llama, "--ppl", text_file, "--max-tokens", "512", "--ctx", "128", "--threads", "1")
    code, plain, _ = run_cli(*args)
    code2, placed, _ = run_cli(*args, "--max-memory", "cpu=700KiB,disk")
    assert code == code2 == 0
    ppl = [line.split()[3] for line in (plain.splitlines()[-1], placed.splitlines()[-1])]
    assert ppl[0] == ppl[1]


def test_plain_folder_refuses_what_cannot_be_placed(tiny_llama, tmp_path):
    assert plain_folder(tiny_llama) == tiny_llama
    with pytest.raises(EdgeLLMError, match="not a model folder"):
        plain_folder(tmp_path)
    packed = shutil.copytree(tiny_llama, tmp_path / "packed")
    cfg = json.loads((packed / "config.json").read_text())
    (packed / "config.json").write_text(json.dumps({**cfg, "edgellm": {"format": "quantized"}}))
    with pytest.raises(EdgeLLMError, match="packed folder"):
        plain_folder(packed)
