"""Verify an exported artifact on its own runtime against a PyTorch reference, before it is kept.

The check, identical for every format:

* a fixed prompt set (``PROMPTS``) through both: max |Δlogit| (also relative to the largest
  reference logit), KL(reference ‖ artifact) per token, and top-1 agreement;
* perplexity of both on the first 4,096 tokens of wikitext-2 test (non-overlapping windows of
  ``ctx``, docs/design.md §4), with KL and top-1 over those tokens too;
* the artifact's own tokenizer, when it has one, must tokenize a sample of that text exactly
  as the reference tokenizer does (a GGUF embeds its own vocabulary and merges).

The *reference* is the PyTorch model holding the weights the artifact is meant to hold: the
source itself for lossless exports, or the source with the exported (already quantized) weights
for lossy ones, so that the tolerance measures the runtime and the writer, not the quantizer.
An optional *source* is scored too and reported (``vs_source``), never judged.
Outside the tolerance, ``EdgeLLMError`` is raised and the caller leaves no artifact behind.
Deliberately absent: generation checks (logits fix greedy decoding) and speed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import EdgeLLMError

PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Turn on the living-room light and play some quiet music.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong was the first to walk on it.",
    "def add(a, b):\n    return a + b\n",
    "Question: what is the capital of France?\nAnswer:",
    "Robots that hold a natural conversation need memory, planning and a sense of time.",
)


@dataclass(frozen=True)
class Tolerance:
    """Limits an artifact must meet against its reference.

    >>> TOLERANCES["f32"].max_kl
    1e-05
    """

    max_kl: float                 # mean KL(reference ‖ artifact) per token, nats, on the perplexity text
    min_top1: float               # top-1 agreement
    max_ppl_rel: float            # |ppl_artifact / ppl_reference − 1|
    max_abs_rel: float | None = None   # max |Δlogit| / max |reference logit| on the prompts
    max_prompt_kl: float | None = None  # mean KL on the short prompts (default: max_kl)

    @property
    def prompt_kl(self) -> float:
        return self.max_kl if self.max_prompt_kl is None else self.max_prompt_kl

    def __post_init__(self):
        if self.max_kl < 0 or self.prompt_kl < 0 or not 0 <= self.min_top1 <= 1 or self.max_ppl_rel < 0:
            raise EdgeLLMError(f"invalid verification tolerance {self}", "use max_kl ≥ 0, 0 ≤ min_top1 ≤ 1, max_ppl_rel ≥ 0")


# Named tolerances. "f32": same weights, fp32 compute. "f16": fp16 weights or compute.
# "int8-act": integer weight kernels that also quantize activations to 8 bits (llama.cpp's
# Q8_0/Q4_0/Q4_1 dot products, ONNX dynamic int8): the weights match exactly, the activations do not.
# Its prompt KL was calibrated on SmolLM2 Q4_0 through llama.cpp (same 4-bit codes as the PyTorch
# reference): KL 0.031 on the 91 prompt tokens, 0.004 on 2,048 text tokens, perplexity +0.5%, and the
# same 0.031 with an f32 embedding/head, so the gap is the 8-bit activations, not the writer. Short
# prompts weigh their first positions heavily, where this model's massive activations make 8-bit
# blocks of 32 coarse; the perplexity text (windows of 512) is dominated by later positions.
TOLERANCES = {
    "f32": Tolerance(max_kl=1e-5, min_top1=0.99, max_ppl_rel=1e-3, max_abs_rel=1e-3),
    "f16": Tolerance(max_kl=1e-3, min_top1=0.97, max_ppl_rel=5e-3),
    "int8-act": Tolerance(max_kl=2e-2, min_top1=0.90, max_ppl_rel=2e-2, max_prompt_kl=6e-2),
}


def resolve_tolerance(tolerance) -> Tolerance:
    if isinstance(tolerance, Tolerance):
        return tolerance
    if tolerance in TOLERANCES:
        return TOLERANCES[tolerance]
    raise EdgeLLMError(f"unknown verification tolerance '{tolerance}'", f"use one of: {', '.join(TOLERANCES)}")


class _Stats:
    def __init__(self):
        self.kl = self.same = self.n = 0
        self.nll_ref = self.nll_art = 0.0
        self.max_abs = self.max_ref = 0.0

    def add(self, ref: torch.Tensor, art: torch.Tensor, target: torch.Tensor | None = None):
        from ..evaluation.agreement import kl_per_token

        self.kl += kl_per_token(ref, art).sum().item()
        self.same += (ref.argmax(-1) == art.argmax(-1)).sum().item()
        self.n += ref.shape[0]
        self.max_abs = max(self.max_abs, (ref - art).abs().max().item())
        self.max_ref = max(self.max_ref, ref.abs().max().item())
        if target is not None:
            self.nll_ref += F.cross_entropy(ref, target, reduction="sum").item()
            self.nll_art += F.cross_entropy(art, target, reduction="sum").item()


def _as_runtime(x, threads):
    if hasattr(x, "logits") and hasattr(x, "weight_bytes"):
        return x
    from ..runtimes.torch import TorchRuntime

    return TorchRuntime(x, device="cpu", threads=threads)


def verify_artifact(artifact, reference, runtime: str, tolerance="f32", *, source=None, ppl_tokens: int = 4096,
                    ctx: int = 512, text=None, threads: int | None = None, runtime_kwargs: dict | None = None) -> dict:
    """Check *artifact* (opened on *runtime*) against *reference* (a ``Loaded`` or a runtime).

    Returns the measured figures; raises ``EdgeLLMError`` listing every limit that was exceeded.

    >>> verify_artifact("out/m.gguf", load("smollm2-135m"), "llama.cpp", "f32")["ppl"]   # doctest: +SKIP
    {'reference': 17.4, 'artifact': 17.4, 'relative_diff': 1.2e-05, ...}
    """
    from ..data import WIKI_TEST, tokenize_file
    from ..evaluation.perplexity import windows
    from ..runtimes import open_runtime

    tol = resolve_tolerance(tolerance)
    t0 = time.perf_counter()
    tok = reference.tokenizer if hasattr(reference, "tokenizer") else None
    if tok is None:
        raise EdgeLLMError("verification needs the source model's tokenizer", "export a model folder with a tokenizer")
    ref_rt = _as_runtime(reference, threads)
    src_rt = _as_runtime(source, threads) if source is not None else None
    art_rt = open_runtime(artifact, runtime=runtime, threads=threads, **(runtime_kwargs or {}))
    try:
        ids = tokenize_file(tok, text or WIKI_TEST, max_tokens=ppl_tokens)
        limits = [getattr(r, "max_positions", None) for r in (art_rt, ref_rt)]
        ctx = min([ctx] + [m for m in limits if m])
        tokenizer_ok = None
        art_tok = getattr(art_rt, "tokenizer", None)
        if art_tok is not None and art_tok is not tok:
            sample = tok.decode(ids[:2048].tolist())
            tokenizer_ok = list(art_tok(sample, add_special_tokens=False)["input_ids"]) == \
                list(tok(sample, add_special_tokens=False)["input_ids"])
        prompt_stats, text_stats, src_stats = _Stats(), _Stats(), _Stats()
        for p in PROMPTS:
            pid = torch.tensor(tok(p, add_special_tokens=False)["input_ids"][:ctx], dtype=torch.long)
            prompt_stats.add(ref_rt.logits(pid).float(), art_rt.logits(pid).float())
        for w in windows(ids, ctx):
            ref = ref_rt.logits(w)[:-1].float()
            art = art_rt.logits(w)[:-1].float()
            text_stats.add(ref, art, w[1:])
            if src_rt is not None:
                src_stats.add(src_rt.logits(w)[:-1].float(), art, w[1:])
    finally:
        if hasattr(art_rt, "close"):
            art_rt.close()
    n = max(text_stats.n, 1)
    ppl_ref, ppl_art = math.exp(text_stats.nll_ref / n), math.exp(text_stats.nll_art / n)
    result = {
        "runtime": runtime, "tolerance": asdict(tol),
        "prompts": {"n_prompts": len(PROMPTS), "n_tokens": prompt_stats.n, "max_abs_diff": prompt_stats.max_abs,
                    "max_abs_rel": prompt_stats.max_abs / max(prompt_stats.max_ref, 1e-12),
                    "kl": prompt_stats.kl / max(prompt_stats.n, 1), "top1": prompt_stats.same / max(prompt_stats.n, 1)},
        "ppl": {"reference": ppl_ref, "artifact": ppl_art, "relative_diff": ppl_art / ppl_ref - 1, "ctx": ctx,
                "n_tokens": text_stats.n + len(windows(ids, ctx)), "kl": text_stats.kl / n, "top1": text_stats.same / n,
                "max_abs_diff": text_stats.max_abs},
        "tokenizer_agrees": tokenizer_ok,
    }
    if src_rt is not None:
        result["vs_source"] = {"ppl_source": math.exp(src_stats.nll_ref / n), "ppl_artifact": ppl_art,
                               "kl": src_stats.kl / n, "top1": src_stats.same / n}
    failures = _failures(result, tol)
    result["passed"] = not failures
    result["seconds"] = time.perf_counter() - t0
    if failures:
        raise EdgeLLMError("export verification failed: " + "; ".join(failures) + "; no artifact was written",
                           "check the export type, or report the model; --no-verify skips this check at your own risk")
    return result


def _failures(r: dict, tol: Tolerance) -> list[str]:
    out = []
    if r["tokenizer_agrees"] is False:
        out.append("the artifact's tokenizer splits the text differently from the source tokenizer")
    for where, max_kl in (("prompts", tol.prompt_kl), ("ppl", tol.max_kl)):
        if not r[where]["kl"] <= max_kl:
            out.append(f"KL on {where} {r[where]['kl']:.3g} > {max_kl:g}")
        if not r[where]["top1"] >= tol.min_top1:
            out.append(f"top-1 agreement on {where} {r[where]['top1']:.4f} < {tol.min_top1:g}")
    if not abs(r["ppl"]["relative_diff"]) <= tol.max_ppl_rel:
        out.append(f"perplexity {r['ppl']['artifact']:.4g} vs {r['ppl']['reference']:.4g} "
                   f"({100 * r['ppl']['relative_diff']:+.2f}%, limit ±{100 * tol.max_ppl_rel:g}%)")
    if tol.max_abs_rel is not None and not r["prompts"]["max_abs_rel"] <= tol.max_abs_rel:
        out.append(f"max |Δlogit| {r['prompts']['max_abs_diff']:.3g} is {r['prompts']['max_abs_rel']:.3g} of the "
                   f"largest logit (limit {tol.max_abs_rel:g})")
    return out


def make_verifier(runtime: str, tolerance="f32", **kwargs):
    """A ``verify(tmp_artifact, reference, source=None) -> dict`` callable for exporters.

    >>> verify = make_verifier("llama.cpp", "int8-act", threads=2)     # doctest: +SKIP
    """
    def verify(artifact, reference, source=None):
        return verify_artifact(artifact, reference, runtime, tolerance, source=source, **kwargs)

    return verify
