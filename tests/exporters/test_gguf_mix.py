"""Budgeted per-tensor GGUF mixes: the Hessian-weighted error is the layer's output MSE, the allocator never
exceeds its budget (and is optimal where brute force can check it), the mix is written into one GGUF that
llama.cpp loads, verifies and reads back with the types asked for, and the predicted loss ranks mixes as
the measured KL does."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgellm.calibconfig import CalibConfig
from edgellm.errors import EdgeLLMError
from edgellm.exporters.gguf import GGUFExportConfig
from edgellm.exporters.gguf_mix import MARGIN, allocate, padded, tensor_errors, type_bytes

gguf = pytest.importorskip("gguf")


def test_bytes_of_a_type_follow_llama_cpps_fallback():
    assert type_bytes((576, 576), "q4_k") == type_bytes((576, 576), "q5_0") == padded(576 * 18 * 22)
    assert type_bytes((576, 1536), "q4_k") == 576 * 6 * 144
    assert type_bytes((8, 72), "q4_0") == type_bytes((8, 72), "q6_k") == padded(8 * 72 * 2)    # no block tiles 72: f16
    assert type_bytes((5,), "q4_0") == padded(5 * 4)                                          # 1-D stays f32


def test_error_is_the_output_mse_on_the_calibration_inputs():
    torch.manual_seed(0)
    W, X = torch.randn(16, 64), torch.randn(300, 64) * torch.linspace(0.1, 3, 64)
    H = 2 / X.shape[0] * X.T @ X
    errs = tensor_errors(W, ["q4_0", "q8_0", "q2_k"], H=H)
    from edgellm.exporters.gguf_mix import quantized_weight

    mse = 2 * ((X @ (W - quantized_weight(W, "q4_0")).T) ** 2).sum(1).mean()
    assert errs["q4_0"] == pytest.approx(float(mse), rel=1e-4)
    assert set(errs) == {"q4_0", "q8_0", "iq4_nl"}             # q2_k cannot tile 64-wide rows: llama.cpp's iq4_nl
    assert errs["q8_0"] < errs["q4_0"]
    counts = torch.randint(0, 5, (16,)).float()                 # an embedding: token counts weigh its rows
    E = W - quantized_weight(W, "q4_0")
    emb = tensor_errors(W, ["q4_0"], counts=counts)["q4_0"]
    assert emb == pytest.approx(float(2 * (counts * (E * E).sum(1)).sum() / counts.sum()), rel=1e-5)


options = st.lists(st.tuples(st.integers(1, 5000), st.floats(0, 1e3)), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(options, min_size=1, max_size=12), st.floats(0, 1.5), st.sampled_from([64, 1 << 17]))
def test_allocator_never_exceeds_the_budget(items, frac, buckets):
    costs = [[c for c, _ in o] for o in items]
    errors = [[e for _, e in o] for o in items]
    lo, hi = sum(min(c) for c in costs), sum(max(c) for c in costs)
    budget = int(lo + frac * (hi - lo))
    pick = allocate(costs, errors, budget, buckets=buckets)
    assert sum(c[k] for c, k in zip(costs, pick)) <= budget
    if budget >= hi:      # a generous budget: the least error of every item
        assert all(errors[i][k] == min(errors[i]) for i, k in enumerate(pick))


@settings(max_examples=200, deadline=None)
@given(st.lists(options, min_size=1, max_size=4), st.floats(0, 1))
def test_allocator_is_optimal_where_brute_force_can_check(items, frac):
    costs = [[c for c, _ in o] for o in items]
    errors = [[e for _, e in o] for o in items]
    lo, hi = sum(min(c) for c in costs), sum(max(c) for c in costs)
    budget = int(lo + frac * (hi - lo))
    pick = allocate(costs, errors, budget)           # ≤ 2^17 bytes: one byte per bucket, the DP is exact
    best = min(sum(errors[i][k] for i, k in enumerate(p)) for p in itertools.product(*[range(len(c)) for c in costs])
               if sum(costs[i][k] for i, k in enumerate(p)) <= budget)
    assert sum(errors[i][k] for i, k in enumerate(pick)) == pytest.approx(best, abs=1e-6)


def test_allocator_below_the_minimum_names_it():
    with pytest.raises(EdgeLLMError, match="smallest possible allocation \\(30 bytes\\)"):
        allocate([[10, 20], [20, 40]], [[1.0, 0.0], [1.0, 0.0]], 29)


# -- budgeted exports on tiny models ---------------------------------------------------------------------
llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny256(tmp_path_factory):
    """Hidden 256 (K-quants tile q/k/v/o/gate/up), intermediate 320 (ffn_down's rows need the fallback)."""
    from conftest import make_tiny_llama
    from edgellm.models import load

    return load(make_tiny_llama(tmp_path_factory.mktemp("mix256") / "llama", hidden_size=256, intermediate_size=320))


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from conftest import synthetic_text

    p = tmp_path_factory.mktemp("mixdata") / "calib.txt"
    p.write_text(synthetic_text(600, seed=1))
    return CalibConfig(data=str(p), samples=8, seq_len=64)


def _types_in_file(path) -> dict:
    return {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("bpw", [3.6, 5.0])
def test_mix_loads_verifies_and_holds_the_types_asked_for(tiny256, calib, tmp_path, bpw):
    from edgellm.exporters import export
    from edgellm.exporters.verify import TOLERANCES

    out = tmp_path / "mix.gguf"
    r = export(tiny256, GGUFExportConfig(target_bpw=bpw, calib=calib), out, threads=2, ppl_tokens=512)
    mix, v = r.details["mix"], r.verification
    assert v["passed"] and v["tolerance"] == TOLERANCES["int8-act"].__dict__
    assert r.file_bytes <= mix["budget_bytes"] == int(bpw * mix["n_weights"] / 8)
    # the tensors and fixed parts are counted exactly; the metadata that depends on the allocation (type names,
    # counts) takes part of the MARGIN, so the file never exceeds the prediction and misses it by at most MARGIN
    assert 0 <= mix["predicted_bytes"] - r.file_bytes <= MARGIN
    in_file = _types_in_file(out)
    assert {n: t["type"] for n, t in mix["tensors"].items()} == {n: t for n, t in in_file.items() if n in mix["tensors"]}
    assert all(t == "f32" for n, t in in_file.items() if n not in mix["tensors"])       # norms
    assert len(set(in_file.values()) - {"f32"}) >= 2                                      # a real mix
    assert in_file["blk.0.ffn_down.weight"] not in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")   # 320-wide rows
    assert mix["predicted_loss"] == pytest.approx(sum(t["loss"] for t in mix["tensors"].values()))


def test_fallback_rows_mix_verifies(tiny_llama, calib, tmp_path):
    """Hidden 96 (SmolLM2's 576 in small): every K-quant falls back, on every tensor."""
    from edgellm.exporters import export

    r = export(tiny_llama, GGUFExportConfig(target_bpw=5.0, calib=calib), tmp_path / "m.gguf", threads=2, ppl_tokens=512)
    assert r.verification["passed"] and r.file_bytes <= r.details["mix"]["budget_bytes"]
    types = set(_types_in_file(tmp_path / "m.gguf").values())
    assert types <= {"f32", "f16", "q8_0", "q4_0", "q5_0", "q5_1", "iq4_nl"} and len(types) >= 3


def test_generous_budget_picks_the_least_error_type(tiny256, calib, tmp_path):
    from edgellm.exporters.gguf import export_gguf_report

    _, r = export_gguf_report(tiny256, tmp_path / "m.gguf", target_bpw=16, calib=calib)
    assert r.mix["types"] == {"q8_0": 22}


def test_pinned_tensor_types(tiny256, calib, tmp_path):
    from edgellm.exporters.gguf import export_gguf_report

    q = "model.layers.1.self_attn.q_proj.weight"
    _, r = export_gguf_report(tiny256, tmp_path / "p.gguf", gguf_type="q8_0", tensor_types={q: "q6_k"})
    assert _types_in_file(tmp_path / "p.gguf")["blk.1.attn_q.weight"] == "q6_k"
    _, r = export_gguf_report(tiny256, tmp_path / "b.gguf", force=True, target_bpw=4.0, calib=calib,
                              tensor_types=[f"{q}=q2_k"], embedding_type="q8_0")
    assert r.mix["tensors"]["blk.1.attn_q.weight"]["type"] == "q2_k" and r.mix["tensors"]["token_embd.weight"]["type"] == "q8_0"


def test_predicted_loss_ranks_mixes_as_measured_kl(tiny256, calib):
    from edgellm.exporters.gguf import gguf_family, plan_tensors, reference_model, tensor_names, write_gguf
    from edgellm.exporters.gguf_mix import plan_mix

    from conftest import synthetic_text

    ids = torch.tensor(tiny256.tokenizer(synthetic_text(200, seed=7))["input_ids"][:1024]).view(4, 256)
    with torch.no_grad():
        ref = torch.log_softmax(tiny256.model(ids).logits.float(), -1)
    names = tensor_names(tiny256.model, gguf_family(tiny256.model))
    predicted, measured = [], []
    for bpw in (3.3, 3.8, 4.4, 5.2, 6.5):
        plan = plan_mix(tiny256, GGUFExportConfig(target_bpw=bpw, calib=calib), names=names, write=write_gguf)
        with torch.no_grad():
            _, by_hf = plan_tensors(tiny256.model, plan.config)
            lp = torch.log_softmax(reference_model(tiny256.model, by_hf)(ids).logits.float(), -1)
        predicted.append(plan.predicted_loss)
        measured.append(float((ref.exp() * (ref - lp)).sum(-1).mean()))
    rank = lambda xs: torch.tensor(xs).argsort().argsort().float()        # noqa: E731
    rp, rm = rank(predicted), rank(measured)
    spearman = float(1 - 6 * ((rp - rm) ** 2).sum() / (len(rp) * (len(rp) ** 2 - 1)))
    assert spearman >= 0.8, (predicted, measured)


def test_budget_below_the_smallest_file_is_one_line_exit_2(tiny256, calib, tmp_path):
    from conftest import run_cli

    src = tmp_path / "src"
    tiny256.model.save_pretrained(src)
    tiny256.tokenizer.save_pretrained(src)
    flags = ["--calib-data", calib.data, "--calib-samples", "8", "--calib-seq-len", "64"]
    code, _, err = run_cli("export", src, "--format", "gguf", "--max-bytes", "100KB", "--out", tmp_path / "m.gguf", *flags)
    assert code == 2 and "smallest possible file" in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "m.gguf").exists()
    code, out, err = run_cli("export", src, "--format", "gguf", "--max-bytes", "800KB", "--out", tmp_path / "m.gguf",
                             "--no-verify", *flags)
    assert code == 0, err
    assert "mix: " in out and (tmp_path / "m.gguf").stat().st_size <= 800_000
    with pytest.raises(EdgeLLMError, match="one budget"):
        dataclasses.replace(GGUFExportConfig(target_bpw=4.0), max_bytes="1MB")


def test_untied_head_gets_its_own_type(calib, tmp_path):
    """Mistral's untied output head: its error uses the final norm's output covariance, the embedding its lookups."""
    from conftest import make_tiny_decoder
    from edgellm.exporters.gguf import export_gguf_report

    src = make_tiny_decoder(tmp_path / "mistral", "mistral")
    _, r = export_gguf_report(str(src), tmp_path / "m.gguf", target_bpw=7.0, calib=calib)
    t = r.mix["tensors"]
    assert {"output.weight", "token_embd.weight"} <= set(t) and t["output.weight"]["loss"] > 0
    assert _types_in_file(tmp_path / "m.gguf")["output.weight"] == t["output.weight"]["type"]
    assert r.file_bytes <= r.mix["budget_bytes"]
