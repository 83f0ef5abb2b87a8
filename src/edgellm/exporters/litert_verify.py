"""What a LiteRT export is verified against: the PyTorch reference per variant, and the classifier check.

Causal LMs go through ``exporters.verify`` like every other format; this module supplies the
reference for the quantized variants: a PyTorch copy holding the weights ``ai_edge_quantizer``
writes (symmetric, scale = max|W| / 127 per output channel for int8, max|W| / 7 per block of
``group_size`` input weights for int4, every ``nn.Linear``), so that the tolerance measures the
converter and the interpreter, not the quantizer. Classifiers are checked here: class
probabilities on fixed sentences against PyTorch, with the labels agreeing.
When the file's token embedding table is quantized (``quantize_embeddings``, the default), the reference
rounds it the same way (per row for 8 bits, per block of ``group_size`` along the row for int4); else
it stays fp32 in both. A tied output head is untied and rounded like the other linears in either case.
The rule is the ONNX and ExecuTorch int8 exports' (``onnx.fake_quantized``, ExecuTorch's torchao
model): the reference holds exactly the weights the file holds.
Dynamic-range ``int8`` also quantizes each fully-connected op's input at run time: per row (one token's
vector), asymmetric int8 between the row's min and max (zero included). The reference does the same
(``fake_quantize_rows_asymmetric`` before every rounded ``nn.Linear``), down to XNNPACK's float arithmetic
for the scale and the ties; given the interpreter's own input, every fully-connected op of 1- to 3-layer tiny
Llamas agrees to 2e-6 on every row, against 2e-2 with the weights rounded alone. Whole models can still part:
the reference's other float ops (RMSNorm's mean and rsqrt, SiLU, softmax) differ from XNNPACK's by an ulp, and
a value within an ulp of a half step is rounded to the neighbouring code, which moves that op's outputs by a
whole step and, through the KV cache, every later position. Tiny Llamas with random norm weights stayed within
2e-6 over 40 positions; the test models' all-ones RMSNorm weights put layer 0's inputs on a grid of exact ties,
so they part within a few tokens (within 1e-6 again with the interpreter's RMSNorm outputs substituted). A deep
model over thousands of tokens meets such ties somewhere, so there the reference matches the interpreter's
rounding noise in distribution, not token for token. ``w8`` dequantizes its weights and
runs fp32, so its reference rounds the weights only. A causal LM's ``int8`` output head is weight-only too
unless ``quantize_head_input``: per-row int8 of the final norm's output was measured to be the largest single
noise source on SmolLM2 (bench/results/litert.json, the noise table), so the head keeps its input fp32 in the
file and in the reference. Deliberately absent: the same for ``int4``, whose
blockwise kernel matches none of per-row, per-block, symmetric or asymmetric input rounding (2.3e-1 to
2.7e-1 on the same Llama), so its reference rounds the weights only and the ``int8-act`` tolerance covers
the rest.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..errors import EdgeLLMError
from ..models import Loaded
from ..runtimes.litert import LiteRTRuntime
from ..runtimes.torch import TorchRuntime
from .onnx import CLASSIFY_PROMPTS, plain_model


def fake_quantize_symmetric(W: torch.Tensor, bits: int, block: int | None = None) -> torch.Tensor:
    """*W* [out, in] rounded to signed *bits*-bit codes, symmetric, per output row or per *block* of inputs.

    >>> fake_quantize_symmetric(torch.tensor([[1.0, -0.5, 0.26]]), 2).tolist()
    [[1.0, -0.0, 0.0]]
    """
    qmax = 2 ** (bits - 1) - 1
    out_f, in_f = W.shape
    blocks = W.reshape(out_f, -1, block) if block else W.reshape(out_f, 1, in_f)
    scale = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-9) / qmax
    q = torch.clamp(torch.round(blocks / scale), -qmax - 1, qmax)
    return (q * scale).reshape(out_f, in_f)


def fake_quantize_rows_asymmetric(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """*x* rounded per row (its last dimension) to asymmetric *bits*-bit codes spanning the row's min and max
    (zero always inside), the way LiteRT's dynamic-range kernels (XNNPACK's ``qd8`` conversion) quantize a
    fully-connected op's input, down to the float arithmetic.

    The kernel multiplies by ``inv = 255 / (max - min)`` (a true float32 division; PyTorch's ``255 / t`` is
    ``t.reciprocal() * 255``, an ulp off) instead of dividing by ``scale = (max - min) / 255``, rounds half to
    even, then adds the zero point (taken from the min or the max end by XNNPACK's rule). At exact ties the
    two formulas round apart: values on a grid, such as a quantized embedding row after a unit-weight
    RMSNorm, land on ``x * inv = k + 0.5``, and ``x / scale`` puts some an ulp to the other side; each such
    code moves the op's outputs by a whole step times a weight (2e-2 on a converted op fed such rows,
    tests/exporters/test_litert_verify.py).

    >>> fake_quantize_rows_asymmetric(torch.tensor([[0.0, 1.0, 2.55]])).tolist()
    [[0.0, 1.0, 2.549999952316284]]
    """
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    hi = x.amax(-1, keepdim=True).clamp(min=0)
    span = hi - lo
    flat = span == 0                                                  # an all-zero row: inv 1, as in the kernel
    inv = torch.full_like(span, float(qmax - qmin)).div(torch.where(flat, torch.ones_like(span), span))
    inv = torch.where(flat, torch.ones_like(inv), inv)
    lo_s, hi_s = lo * inv, hi * inv
    zero = torch.where((qmin + lo_s) + (qmax + hi_s) > 0, qmin - lo_s, qmax - hi_s).clamp(qmin, qmax).round()
    q = torch.clamp(torch.round(x * inv) + zero, qmin, qmax)
    return (q - zero) * (1.0 / inv)


def _quantize_input(module, args):
    return (fake_quantize_rows_asymmetric(args[0]),) + tuple(args[1:])


def reference_for(loaded: Loaded, cfg) -> Loaded:
    """*loaded* for fp32; else a PyTorch copy with the weights the *cfg.variant* file holds (see module doc).

    >>> reference_for(loaded, LiteRTExportConfig(variant="int4")).model is loaded.model     # doctest: +SKIP
    False
    """
    if cfg.variant == "fp32":
        return loaded
    bits, block = (4, cfg.group_size) if cfg.variant == "int4" else (8, None)
    net = copy.deepcopy(plain_model(loaded.model)).float().eval()
    fits = lambda W: block is None or W.shape[1] % block == 0      # noqa: E731 - int4: whole blocks only
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    head_input = getattr(cfg, "quantize_head_input", True)
    for mod in net.modules():
        if isinstance(mod, torch.nn.Linear) and fits(mod.weight):
            Wq = fake_quantize_symmetric(mod.weight.detach(), bits, block)
            mod.weight = torch.nn.Parameter(Wq, requires_grad=False)    # unties a tied head from the table
            if cfg.variant == "int8" and (mod is not head or head_input):   # dynamic range: input rounded at run time
                mod.register_forward_pre_hook(_quantize_input)
    emb = net.get_input_embeddings() if hasattr(net, "get_input_embeddings") else None
    if getattr(cfg, "quantize_embeddings", False) and isinstance(emb, torch.nn.Embedding) and fits(emb.weight):
        Eq = fake_quantize_symmetric(emb.weight.detach(), bits, block)   # [vocab, hidden]: per row (or its blocks)
        emb.weight = torch.nn.Parameter(Eq, requires_grad=False)
    return Loaded(net, loaded.tokenizer, loaded.meta)


def verify_litert_classifier(folder: Path, loaded: Loaded, reference: Loaded, variant: str,
                             threads: int | None = None) -> dict:
    """Class probabilities of the LiteRT classifier against *reference* on fixed sentences; raises if out of tolerance.

    >>> verify_litert_classifier(tmp, loaded, loaded, "fp32")["label_agreement"]     # doctest: +SKIP
    1.0
    """
    limit = 1e-4 if variant == "fp32" else (2e-2 if variant == "w8" else 0.15)
    rt = LiteRTRuntime(folder, threads=threads)
    texts = list(CLASSIFY_PROMPTS)
    art = rt.classify(texts).softmax(-1)
    ref = TorchRuntime(reference, device="cpu", threads=threads).classify(texts, max_length=rt.seq_len).softmax(-1)
    src = TorchRuntime(loaded, device="cpu", threads=threads).classify(texts, max_length=rt.seq_len).softmax(-1)
    diff = (ref - art).abs().max().item()
    agree = (ref.argmax(-1) == art.argmax(-1)).float().mean().item()
    report = {"n_sentences": len(texts), "max_prob_diff": diff, "label_agreement": agree,
              "vs_source": {"max_prob_diff": (src - art).abs().max().item(),
                            "label_agreement": (src.argmax(-1) == art.argmax(-1)).float().mean().item()},
              "tolerance": {"max_prob_diff": limit, "label_agreement": 1.0}, "passed": diff <= limit and agree == 1.0}
    if not report["passed"]:
        raise EdgeLLMError(f"export verification failed: class probabilities differ by {diff:.3g} (limit {limit:g}), "
                           f"labels agree on {agree:.0%}; no artifact was written", "check the variant, or report the model")
    return report


__all__ = ["fake_quantize_rows_asymmetric", "fake_quantize_symmetric", "reference_for", "verify_litert_classifier"]
