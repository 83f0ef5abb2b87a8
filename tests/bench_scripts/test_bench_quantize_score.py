"""bench.quantize scores through evaluate_lm against fp32 log-probs cached in a memmap: the same figures
as evaluate_lm against the fp32 runtime itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.quantize import CachedReference, score
from edgellm.evaluation.perplexity import evaluate_lm, windows
from edgellm.models import load
from edgellm.quantization import QuantConfig, quantize
from edgellm.runtimes.torch import TorchRuntime


def test_cached_reference_gives_evaluate_lms_figures(tiny_llama, tmp_path):
    ref_rt = TorchRuntime(load(tiny_llama), device="cpu", threads=1)
    cand = load(tiny_llama)
    quantize(cand, QuantConfig(method="rtn", bits=4, group_size=32), progress=False)
    cand_rt = TorchRuntime(cand, device="cpu", threads=1)
    V = ref_rt.model.config.vocab_size
    wins = windows(torch.randint(0, V, (4 * 16,), generator=torch.Generator().manual_seed(0)), 16)
    mm = np.memmap(tmp_path / "ref.f32", dtype=np.float32, mode="w+", shape=(len(wins), 15, V))

    fp32 = evaluate_lm(CachedReference(mm, wins, ref_rt), chunks=wins)          # the reference pass fills mm
    assert fp32.perplexity == pytest.approx(evaluate_lm(ref_rt, chunks=wins).perplexity, rel=1e-5)
    replay = evaluate_lm(CachedReference(mm, wins), chunks=wins)                 # --reuse-ref: from mm only
    assert replay.perplexity == pytest.approx(fp32.perplexity, rel=1e-5)

    s = score(cand_rt, wins, CachedReference(mm, wins))
    direct = evaluate_lm(cand_rt, chunks=wins, reference=ref_rt)
    assert s["perplexity"] == pytest.approx(direct.perplexity, rel=1e-6)
    assert s["kl"] == pytest.approx(direct.agreement.kl, rel=1e-4, abs=1e-7) and s["kl"] > 0
    assert s["top1"] == direct.agreement.top1 and s["n_predicted"] == 4 * 15
    assert math.isfinite(s["perplexity"])
