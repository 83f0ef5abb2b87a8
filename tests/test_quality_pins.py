"""The published quality figures, pinned (slow: the real SmolLM2 and MiniLM).

Each test runs a short protocol of one headline benchmark and asserts its figure lies within a stated
margin of a value pinned here, so that a regression in a quantizer, a pruner or an exporter fails
``make test`` instead of going unnoticed:

- GPTQ after AWQ at W4 g32 (``recipes/w4-gptq-g32-sym-fast.yaml``; published: bench/results/quantize.json,
  quantize_speed.json);
- SparseGPT at 50% unstructured (bench/results/prune.json);
- edgellm's Q4_0 GGUF (the GPTQ model above) against llama.cpp's own Q4_0, both through llama.cpp
  (bench/results/gguf_vs_llamacpp.json), and the same weights' perplexity in llama.cpp against PyTorch;
- the MiniLM int8 ONNX classifier on SST-2 dev (bench/results/classifier_onnx.json).

Protocol, shared by the language-model pins: wikitext-2 test, ctx 512, the first 4,096 tokens (8 windows),
2 threads; calibration on 8 windows of 512 tokens of wiki.valid; SparseGPT prunes the first 5 of the 30
blocks (the published runs use 32 windows, every block and 20,480 scored tokens, so the pinned figures are
this protocol's own, not the published ones). The pins were measured on a 2-core AMD EPYC, under the
shared lock, with:
``flock /tmp/edgellm-heavy.lock .venv/bin/python -m pytest -q -p no:cacheprovider -m slow tests/test_quality_pins.py``.
Each margin is wide enough for thread-order noise and narrow enough that a real regression (the
perplexity rise growing by half, or an int8 export losing a point and a half of accuracy) fails. A figure
better than its pin by more than the margin fails too: a protocol that stops measuring what it did must be
re-pinned, not trusted.

Left out: speed (bench/, not tests: it depends on the machine's load) and the published protocol
itself (minutes per figure; the bench scripts run it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from edgellm.api import evaluate
from edgellm.calibconfig import CalibConfig
from edgellm.data import SST2, data_file, read_tsv
from edgellm.distillation import DistillConfig, finetune
from edgellm.evaluation import accuracy
from edgellm.exporters import export
from edgellm.exporters.llamacpp_quant import llama_quantize
from edgellm.models import load
from edgellm.pruning import PruneConfig, prune
from edgellm.quantization import quantize
from edgellm.recipe import load_recipe
from edgellm.runtimes import open_runtime

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
TOKENS = 4096          # scored tokens of wikitext-2 test (8 windows of 512)
CALIB = CalibConfig(samples=8, seq_len=512)
SPARSE_BLOCKS = "model.layers.[0-4].*"     # SparseGPT's column loop is the slow part: the first 5 of 30 blocks
# measured once each (see the tests' docstrings); fp32 on this protocol: perplexity 30.0746
PIN_GPTQ = 9.088      # % rise
PIN_SPARSE = 20.51    # % rise
PIN_LLAMA = 24.39     # % rise of llama.cpp's own Q4_0
PIN_RATIO = 0.3845    # edgellm Q4_0 rise (9.380%) ÷ llama.cpp Q4_0 rise (24.395%)
PIN_INT8 = 81.83      # % SST-2 dev accuracy of the int8 ONNX classifier (torch: 81.86%)
PIN_DELTA = -0.03     # int8 − torch, accuracy points


def ppl(model, runtime: str = "auto") -> float:
    """Perplexity of *model* (a ``Loaded`` record or a .gguf path) on the short protocol."""
    spec = str(model) if isinstance(model, Path) else model
    return evaluate(spec, ctx=512, max_tokens=TOKENS, threads=THREADS, runtime=runtime).perplexity.perplexity


def rise(value: float, base: float) -> float:
    """Perplexity rise over *base*, in percent."""
    return 100.0 * (value / base - 1.0)


def within(measured: float, pinned: float, margin: float, what: str) -> None:
    print(f"{what}: measured {measured:.4f} (pinned {pinned:.4f} ± {margin})")
    assert abs(measured - pinned) <= margin, (
        f"{what}: measured {measured:.4g}, pinned {pinned:.4g} ± {margin:.3g}: a regression, or an improvement "
        "to re-pin (measure it under the lock and update the pin and this docstring)")


@pytest.fixture(scope="module")
def fp32_ppl() -> float:
    torch.set_num_threads(THREADS)
    p = ppl(load("smollm2-135m"), runtime="torch")
    print(f"fp32 ppl {p:.4f}")
    return p


@pytest.fixture(scope="module")
def gptq_smollm2():
    """SmolLM2 quantized by recipes/w4-gptq-g32-sym-fast.yaml, calibrated on CALIB (shared by two pins)."""
    torch.set_num_threads(THREADS)
    cfg = load_recipe(ROOT / "recipes" / "w4-gptq-g32-sym-fast.yaml").steps["quantize"]
    m = load("smollm2-135m")
    _, res = quantize(m, dataclasses.replace(cfg, calib=dataclasses.replace(cfg.calib, **dataclasses.asdict(CALIB))),
                      progress=False)
    assert res.kernels == {"int4": 210}
    return m


@pytest.fixture(scope="module")
def gptq_torch_ppl(gptq_smollm2) -> float:
    """The GPTQ model's perplexity in PyTorch (shared by its pin and the llama.cpp same-weights check)."""
    return ppl(gptq_smollm2, runtime="torch")


@pytest.mark.slow
def test_gptq_awq_w4_g32_rise_is_pinned(gptq_torch_ppl, fp32_ppl):
    """GPTQ after AWQ, W4 g32 symmetric (the fast recipe): perplexity rise over fp32, torch runtime.

    Pinned: +9.088% (fp32 30.0746; published on the full protocol: +8.06% in both
    quantize.json and quantize_speed.json). Margin ± 4 points: the rise growing by half fails. Measured twice (2026-11-30,
    commit 4de72af plus the working tree): 9.0878 both times.
    """
    within(rise(gptq_torch_ppl, fp32_ppl), PIN_GPTQ, 4.0, "GPTQ+AWQ W4 g32 perplexity rise (%)")


@pytest.mark.slow
def test_sparsegpt_50_rise_is_pinned(fp32_ppl):
    """SparseGPT, 50% unstructured, every linear of the first 5 decoder blocks (of 30): perplexity rise over fp32.

    Pinned: +20.51% (2026-11-30, 5 blocks; 10 blocks gave +35.10%; published on the full protocol with all 30
    blocks pruned: +81.0%, prune.json). Margin ± 10 points: the rise growing by half fails.
    """
    torch.set_num_threads(THREADS)
    m = load("smollm2-135m")
    _, res = prune(m, PruneConfig(method="sparsegpt", sparsity=0.5, include=(SPARSE_BLOCKS,), calib=CALIB),
                   progress=False)
    assert res.n_linears == 5 * 7 and abs(res.achieved_sparsity - 0.5) < 1e-3
    within(rise(ppl(m, runtime="torch"), fp32_ppl), PIN_SPARSE, 10.0, "SparseGPT 50% perplexity rise (%)")


@pytest.mark.slow
def test_q4_0_export_against_llamacpp_q4_0_is_pinned(gptq_smollm2, gptq_torch_ppl, fp32_ppl, tmp_path):
    """edgellm's Q4_0 GGUF (the GPTQ model's codes written into Q4_0 blocks) against llama.cpp's own Q4_0
    of the same fp32 model (llama_model_quantize), both scored through llama.cpp; rises over fp32 torch.
    Also: the same 4-bit weights score the same perplexity in llama.cpp as in PyTorch, within 1% (the
    codes go into the blocks exactly; the token embedding is Q8_0 in the file).

    Pinned (2026-11-30): edgellm +9.380%, llama.cpp +24.395%, ratio 0.3845 (published on the full protocol,
    32 calibration windows: +2.144 vs +7.473 perplexity, ratio 0.29, gguf_vs_llamacpp.json; target ≤ 0.5).
    Margins: ratio ± 0.15 (edgellm's rise growing by half fails), llama.cpp's rise ± 8 points (it checks
    the reference itself).
    """
    ours = export(gptq_smollm2, "gguf", tmp_path / "ours-q4_0.gguf", gguf_type="q4_0", verify=False)   # checked below
    assert ours.details["how"]["exact"] == 210
    f32 = export(load("smollm2-135m"), "gguf", tmp_path / "f32.gguf", gguf_type="f32", verify=False)
    theirs = llama_quantize(f32.path, tmp_path / "llamacpp-q4_0.gguf", "q4_0", threads=THREADS)
    ppl_ours = ppl(ours.path)
    print(f"same weights: llama.cpp {ppl_ours:.4f}, PyTorch {gptq_torch_ppl:.4f}")
    assert abs(ppl_ours / gptq_torch_ppl - 1) < 0.01
    r_ours, r_theirs = rise(ppl_ours, fp32_ppl), rise(ppl(theirs), fp32_ppl)
    print(f"edgellm Q4_0 rise {r_ours:.4f}%, llama.cpp Q4_0 rise {r_theirs:.4f}%")
    within(r_theirs, PIN_LLAMA, 8.0, "llama.cpp Q4_0 perplexity rise (%)")
    within(r_ours / r_theirs, PIN_RATIO, 0.15, "edgellm Q4_0 rise ÷ llama.cpp Q4_0 rise")


@pytest.mark.slow
def test_minilm_int8_classifier_accuracy_is_pinned(tmp_path):
    """all-MiniLM-L6-v2 with a fresh 2-label head fine-tuned on SST-2 train (40 steps × 16 sentences, lr 1e-4,
    max 64 tokens, seed 0), exported as the fused int8 ONNX graph; accuracy on all 6,735 rows of ``sst-2/dev.tsv``
    (short phrases; the 872 full sentences of ``test.tsv`` were tried and dropped: the 40-step fine-tune's
    accuracy there moved by 2.5 points between two runs, torch 77.18% then 74.66%, too much for a pin).

    The rows go in batches of 32 sorted by length: half the padding, half the time. The accuracy in PyTorch is the
    same as in file order; the int8 graph's differs by a few rows (its activations are quantized per tensor, and
    the padding is part of the tensor): 81.83% sorted, 81.72% in file order, from the same fine-tune.

    Pinned (2026-11-30, sorted): int8 81.83%, torch fp32 81.86% (Δ −0.03 points; published after 200 × 32 steps:
    87.02% and −0.53 points, classifier_onnx.json). Margins: int8 accuracy ± 2.5 points, Δ vs torch ± 1 point.
    """
    torch.set_num_threads(THREADS)
    ft = tmp_path / "minilm-sst2"
    cfg = DistillConfig(steps=40, lr=1e-4, batch_size=16, max_length=64, warmup=4, eval_every=0)
    finetune(load("minilm-l6", task="classification", num_labels=2), data_file(SST2.format(split="train")), cfg,
             out=ft, progress=False)
    art = export(load(ft, task="classification"), "onnx", tmp_path / "minilm-int8.onnx", variant="int8",
                 threads=THREADS)
    dev = sorted(read_tsv(data_file(SST2.format(split="dev"))), key=lambda r: len(r.text))   # batches of like length
    acc_torch = 100 * accuracy(open_runtime(load(ft, task="classification"), threads=THREADS, device="cpu"), dev).accuracy
    acc_int8 = 100 * accuracy(open_runtime(art.path, threads=THREADS), dev).accuracy
    print(f"accuracy torch {acc_torch:.4f}%, int8 {acc_int8:.4f}%")
    within(acc_int8, PIN_INT8, 2.5, "MiniLM int8 SST-2 dev accuracy (%)")
    within(acc_int8 - acc_torch, PIN_DELTA, 1.0, "int8 − torch accuracy (points)")
