"""GPTQ onto a GGUF type's own grid: codes that go into the file without a second rounding.

``gptq_onto_grid(W, H, qtype)`` is the math, on plain tensors. The type's scales are fitted
**once** per slab from the original weights (``gguf_types.Grid.fit`` with ``importance = diag(H)``,
which is what llama.cpp's importance matrix holds: the mean square of each input channel), then
GPTQ's column loop (Frantar et al., 2022: lazy batch updates, the upper Cholesky factor of the
damped inverse Hessian) rounds each column onto that fixed grid and pushes its error, weighted by
``H⁻¹``, onto the columns not yet rounded. With ``act_order`` the columns go by decreasing
``diag(H)``; the scales stay the ones fitted on the blocks / super-blocks in their stored order,
so act-order is only the order of the sweep. The result is a ``TypeCodes`` whose ``dequantize()``
is exactly what llama.cpp reconstructs from ``pack(result)``. Rows a type cannot tile get
llama.cpp's fallback type (``gguf_types.fallback``); a fallback to f16 is ``GridMismatch``.

``quantize_blocks(model, types_of, ids)`` is the plumbing for a whole model
(``calibrate.run_blockwise``): each block's linears get their input Hessians (shared by q/k/v and
by gate/up, which are then swept as one stacked matrix when they share a type), optionally AWQ's
per-input-channel prescale first (``awq_prescale``: α searched on the type's own RTN grid against
the same Hessian, folded into the norm or linear that produces the input by
``transforms.scalefold.fold_scale``, so the float model is unchanged), then ``gptq_onto_grid`` per
linear; the block's weights are replaced by their dequantized codes before its outputs are
computed, so later blocks calibrate on the quantized model. The caller works on a copy (the
model's weights and norms change). When the consumers of one prescale have different types, the
scale is searched on the coarsest grid; a tie in levels goes to the type named first.

The output head below 8 bits (``head_type``) is GPTQ'd too, onto its own type, with ``H`` the covariance
of the final norm's outputs on the quantized model (the last block's outputs). A tied head is the token
embedding, so the lookup gets the same codes: on SmolLM2 (32×512 calibration tokens, torch, the linears left
float) a Q5_0 tied embedding/head rises +3.4% in perplexity by RTN, +1.4% by RTN weighted by ``diag(H)``
and +0.4% by GPTQ; that is what lets a budget move the head off Q8_0 and spend the bytes on the linears.
A Q8_0 head stays RTN (already near-lossless; the sweep over its 49k rows would cost seconds for nothing).

Deliberately absent: re-fitting the scales after the sweep, GPTQ of an untied token embedding (a lookup
has no input Hessian; it keeps RTN), and a dynamic (per-group, updated-weight) scale choice.
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch
from torch import nn

from ..calibrate import HessianStats, SharedInputs, current_family, head_hessian, run_blockwise
from ..data import calibration_windows, resolve_data_path
from ..errors import EdgeLLMError
from ..families import find_blocks, module
from ..transforms.scalefold import can_fold, fold_scale
from .gguf_blocks import GridMismatch
from .gguf_types import TYPES, TypeCodes, fallback, gguf_grid, rtn


def hessian_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """``Σ_rows (W − Q) H (W − Q)ᵀ``: the layer's output MSE on the inputs whose ``H = 2/n XᵀX`` is given.

    >>> hessian_error(torch.ones(1, 2), torch.zeros(1, 2), torch.eye(2))
    2.0
    """
    E = (W - Q).float()
    return float(((E @ H.float()) * E).sum(dtype=torch.float64))


@contextlib.contextmanager
def _one_thread():
    """The column loop is thousands of small ops; on 2 busy cores OpenMP's barriers cost more than they give."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _inverse_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹``, λ = damp·mean(diag H); λ grows ×10 while H stays indefinite."""
    lam = damp * float(torch.diag(H).mean())
    for _ in range(6):
        Hd = H.clone()
        Hd.diagonal().add_(lam)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
        lam *= 10
    raise GridMismatch("the Hessian is not positive definite even after dampening")


@torch.no_grad()
def gptq_onto_grid(W: torch.Tensor, H: torch.Tensor, qtype: str, *, damp: float = 0.01, act_order: bool = True,
                   block_size: int = 128) -> TypeCodes:
    """GPTQ of ``W [out, in]`` with input Hessian ``H [in, in]`` onto *qtype*'s grid (llama.cpp's fallback
    type where *in* is not a multiple of the type's block).

    >>> X = torch.randn(512, 256); tc = gptq_onto_grid(torch.randn(8, 256), 2 * X.T @ X / 512, "q4_k")
    >>> tc.qtype, tc.codes.shape
    ('q4_k', torch.Size([8, 256]))
    """
    W = W.detach().float().clone()                       # W: [out, in]
    out_f, K = W.shape
    t = fallback(qtype, K)
    if t not in TYPES:
        raise GridMismatch(f"rows of {K} fit neither {qtype} nor its fallback (llama.cpp writes f16)")
    grid = gguf_grid(t)
    H = H.detach().float().clone()                       # H: [in, in]
    dead = torch.diag(H) <= 0
    H[dead, dead] = 1
    W[:, dead] = 0
    importance = torch.diag(H).clone()
    importance[dead] = 0
    p = grid.fit(W, importance)                          # the stored scales, once, from the original weights
    S, O = grid.scale_offset(p)                          # [out, in] per-column scale and offset
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(K)
    Hinv = _inverse_factor(H[perm][:, perm], damp)
    Wt = W[:, perm].t().contiguous()                     # [in, out]: column i of W is the row Wt[i]
    St = S[:, perm].t().contiguous()
    Ot = None if O is None else O[:, perm].t().contiguous()
    with _one_thread():
        codes_t = _sweep(grid, Wt, St, Ot, Hinv, block_size)
    codes = codes_t.t()[:, torch.argsort(perm)].contiguous()
    return TypeCodes(t, codes, p)


def _sweep(grid, Wt, St, Ot, Hinv, block_size):
    """GPTQ's column loop over ``Wt [in, out]`` with fixed per-column scales ``St`` / offsets ``Ot``; codes [in, out]."""
    K = Wt.shape[0]
    codes = torch.empty(Wt.shape, dtype=torch.int16)
    safe = torch.where(St == 0, torch.ones_like(St), St)
    levels = grid.levels
    off = None if not grid.uniform else -levels[0].item()
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1, Err1, Hinv1 = Wt[i1:i2], torch.empty_like(Wt[i1:i2]), Hinv[i1:i2, i1:i2]
        d = Hinv1.diagonal().tolist()
        for i in range(i2 - i1):
            j = i1 + i
            w, s = W1[i], St[j]
            x = w if Ot is None else w - Ot[j]
            if off is not None:                           # uniform levels: code = round(x/s) + off
                c = torch.round(x / safe[j]).add_(off)
                c = torch.where(s == 0, torch.full_like(c, off), c).clamp_(grid.lo, grid.hi)
                q = (c - off).mul_(s)
            else:                                         # iq4_nl: the nearest of the 16 levels·s
                c = (s.unsqueeze(-1) * levels - w.unsqueeze(-1)).abs().argmin(-1)
                q = s * levels[c]
            if Ot is not None:
                q = q + Ot[j]
            codes[j] = c.to(torch.int16)
            err = (w - q).div_(d[i])
            Err1[i] = err
            if i + 1 < i2 - i1:
                W1[i + 1:] -= Hinv1[i, i + 1:].unsqueeze(1) * err.unsqueeze(0)
        Wt[i2:] -= Hinv[i1:i2, i2:].t() @ Err1
    return codes


# -- AWQ's prescale on a GGUF grid ---------------------------------------------------------------------
@torch.no_grad()
def awq_grid_scale(W: torch.Tensor, H: torch.Tensor, x_mean: torch.Tensor, qtype: str,
                   grid: int = 10, max_rows: int = 512) -> tuple[torch.Tensor, float, float]:
    """AWQ's per-input-channel scale ``s = mean|x|^α`` (geometric mean 1) for ``W [out, in]``, α on a grid in
    [0, 1), each scored by ``hessian_error`` of *qtype*'s RTN of ``W·diag(s)`` (divided back by s) on at most
    *max_rows* evenly spaced rows (rows round independently; the subset only estimates the sum).
    Returns ``(s, error, error at α = 0)`` on those rows; α = 0 is on the grid, so the prescale never
    raises the estimated error.

    >>> X = torch.randn(256, 64); s, e, e0 = awq_grid_scale(torch.randn(8, 64), 2 * X.T @ X / 256, X.abs().mean(0), "q4_0")
    >>> e <= e0
    True
    """
    W, H = W.float(), H.float()
    if W.shape[0] > max_rows:
        W = W[torch.linspace(0, W.shape[0] - 1, max_rows).round().long()]
    x_mean = x_mean.float().clamp_min(1e-8)
    t = fallback(qtype, W.shape[1])
    best, base = (torch.ones_like(x_mean), float("inf")), None
    for i in range(grid):
        s = x_mean.pow(i / grid)
        s = s / (s.max() * s.min()).sqrt()
        err = hessian_error(W, rtn(W * s, t).dequantize() / s, H)
        base = err if i == 0 else base
        if err < best[1]:
            best = (s, err)
    return best[0], best[1], base


class _Stats:
    """A linear's input Hessian and, for the prescale, Σ|x| per channel."""

    def __init__(self, k: int):
        self.hessian, self.abs_sum, self.n = HessianStats(k), torch.zeros(k, dtype=torch.float64), 0

    def add(self, x: torch.Tensor) -> None:
        self.hessian.add(x)
        self.abs_sum += x.abs().sum(0, dtype=torch.float64)
        self.n += x.shape[0]


class GridGPTQ:
    """``run_blockwise`` plug-in: Hessians per linear, optional AWQ prescale, ``gptq_onto_grid`` per linear.

    *types_of* maps HF weight names (``model.layers.3.self_attn.q_proj.weight``) to the type asked
    for; the codes land in ``self.codes`` under the same names, and each linear holds its
    dequantized codes afterwards. Block forwards run under bf16 autocast (as ``GPTQMethod``'s do).
    """

    forward_dtype = torch.bfloat16

    def __init__(self, prefix: str, types_of: dict, *, awq_prescale: bool = False, damp: float = 0.01,
                 act_order: bool = True, final_norm: nn.Module | None = None, last: int = -1):
        self.prefix, self.types_of, self.awq = prefix, types_of, awq_prescale
        self.damp, self.act_order = damp, act_order
        self.shared = SharedInputs(_Stats)
        self.index = 0
        self.codes: dict[str, TypeCodes] = {}
        self.prescale: list[dict] = []
        self.final_norm, self.last = final_norm, last          # last >= 0: collect the head's input Hessian there
        self.head_hessian: HessianStats | None = None

    def _full(self, local: str) -> str:
        return f"{self.prefix}.{self.index}.{local}.weight"

    def start_block(self, index):
        self.index = index
        self.shared.reset()

    def new_stats(self, name, linear):
        full = self._full(name)
        if full not in self.types_of or fallback(self.types_of[full], linear.in_features) not in TYPES:
            return None
        return self.shared.proxy(linear.in_features)

    def _effective(self, local, lin) -> str:
        return fallback(self.types_of[self._full(local)], lin.in_features)

    def _prescale(self, block, stats) -> dict[str, torch.Tensor]:
        family, applied = current_family(), {}
        for prod_name, cons_names in family.awq_folds:
            names = [n for n in cons_names if n in stats and n not in applied]
            try:
                producer = block.get_submodule(prod_name)
            except AttributeError:
                continue
            consumers = [stats[n][0] for n in names]
            if not can_fold(producer, consumers):
                continue
            st = stats[names[0]][1].stats
            # the coarsest grid among the consumers' types; ties (q4_0, q4_k, iq4_nl: 16 levels each) go by name,
            # never by the set's iteration order (it follows PYTHONHASHSEED)
            types = sorted({self._effective(n, stats[n][0]) for n in names},
                           key=lambda q: (gguf_grid(q).levels.numel(), q))
            W = torch.cat([lin.weight.float() for lin in consumers])
            s, err, base = awq_grid_scale(W, st.hessian.H, (st.abs_sum / max(st.n, 1)).float(), types[0])
            fold_scale(producer, consumers, s, family.norm_offset)
            self.prescale.append({"block": self.index, "producer": prod_name, "consumers": names, "type": types[0],
                                  "error": err, "rtn_error": base})
            for n in names:
                applied[n] = s
        return applied

    def apply_block(self, index, block, stats, block_inputs):
        applied = self._prescale(block, stats) if self.awq else {}
        groups: dict[tuple, list[str]] = {}
        for local, (lin, proxy) in stats.items():
            key = (id(proxy.stats), self._effective(local, lin), id(applied.get(local)))
            groups.setdefault(key, []).append(local)
        for (_, qtype, _), names in groups.items():
            lins = [stats[n][0] for n in names]
            H = stats[names[0]][1].stats.hessian.H
            if names[0] in applied:          # inputs are now X·diag(s)⁻¹: H becomes diag(s)⁻¹ H diag(s)⁻¹
                s = applied[names[0]]
                H = H / (s.view(-1, 1) * s.view(1, -1))
            tc = gptq_onto_grid(torch.cat([lin.weight for lin in lins]), H, qtype, damp=self.damp,
                                act_order=self.act_order)
            start = 0
            for name, lin in zip(names, lins):
                a, b = start, start + lin.out_features
                part = tc if len(lins) == 1 else tc.rows(lambda x, a=a, b=b: x[a:b].contiguous())
                start = b
                lin.weight.copy_(part.dequantize().to(lin.weight.dtype))
                self.codes[self._full(name)] = part
        self.shared.reset()
        if index != self.last:
            return None
        outs = block_inputs.run(block)          # the quantized model's last hidden states, through the final norm
        self.head_hessian = head_hessian(outs, self.final_norm)
        return outs


def head_name(model: nn.Module) -> str | None:
    """The HF name under which the GGUF writer stores the output head's weight: the input embedding's for a
    tied head (written once, as ``token_embd``), else the head's own; None without a linear head."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        return None
    target = emb.weight if emb is not None and head.weight is emb.weight else head.weight
    return next((n for n, p in model.named_parameters() if p is target), None)


def quantize_blocks(model: nn.Module, types_of: dict, ids: torch.Tensor, *, awq_prescale: bool = False,
                    head_type: str | None = None, progress: bool = False) -> tuple[dict[str, TypeCodes], dict]:
    """GPTQ every block linear of *model* (changed in place: pass a copy) named in *types_of* onto its type,
    calibrated on *ids* ``[N, L]``; with *head_type*, the output head too (``head_name``; see the module
    docstring). Returns (HF weight name -> ``TypeCodes``, a summary: seconds, prescale log, head).

    >>> codes, info = quantize_blocks(copy.deepcopy(model), {"model.layers.0.mlp.up_proj.weight": "q4_k"}, ids)  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    prefix, blocks = find_blocks(model)
    hname = head_name(model) if head_type else None
    method = GridGPTQ(prefix, types_of, awq_prescale=awq_prescale,
                      final_norm=module(model, "final_norm") if hname else None, last=len(blocks) - 1 if hname else -1)
    with torch.no_grad():
        run_blockwise(model, ids, method, progress=progress, desc="gguf gptq")
        head_info = None
        if hname and method.head_hessian is not None:
            head = model.get_output_embeddings()
            th = time.perf_counter()
            tc = gptq_onto_grid(head.weight, method.head_hessian.H, head_type, damp=method.damp,
                                act_order=method.act_order)
            head.weight.copy_(tc.dequantize().to(head.weight.dtype))     # a tied embedding gets the same codes
            method.codes[hname] = tc
            head_info = {"tensor": hname, "type": tc.qtype, "seconds": round(time.perf_counter() - th, 2)}
    info = {"seconds": time.perf_counter() - t0, "tensors": len(method.codes), "calibration_tokens": int(ids.numel()),
            "head": head_info}
    if awq_prescale:
        info["prescale"] = {"folds": len(method.prescale),
                            "error_ratio": sum(p["error"] for p in method.prescale) /
                            max(sum(p["rtn_error"] for p in method.prescale), 1e-30)}
    return method.codes, info


def quantize_model(loaded, cfg, *, progress: bool = False) -> tuple[nn.Module, dict[str, TypeCodes], dict]:
    """``--quantizer gptq`` for the GGUF exporter: a copy of *loaded*'s float model with every block linear
    GPTQ'd onto its type (``cfg.tensor_types`` pins, else ``cfg.gguf_type``; llama.cpp's fallbacks), calibrated
    on ``cfg.calib``. Returns (the copy, HF weight name -> ``TypeCodes``, ``quantize_blocks``' summary).

    >>> model, codes, info = quantize_model(load("smollm2-135m"), GGUFExportConfig(gguf_type="q4_k", quantizer="gptq"))  # doctest: +SKIP
    """
    model = loaded.model
    if any(callable(getattr(m, "unpack", None)) for m in model.modules()):
        raise EdgeLLMError("--quantizer gptq quantizes float weights; this model is already quantized",
                           "export the float model with --quantizer gptq, or this one with --quantizer rtn")
    if loaded.tokenizer is None:
        raise EdgeLLMError("--quantizer gptq needs calibration text, and the model has no tokenizer",
                           "export a model folder with a tokenizer")
    prefix, blocks = find_blocks(model)
    pinned = dict(s.split("=", 1) for s in cfg.tensor_types)
    types_of = {}
    for i, block in enumerate(blocks):
        for local, lin in block.named_modules():
            name = f"{prefix}.{i}.{local}.weight"
            t = pinned.get(name, cfg.gguf_type)
            if isinstance(lin, nn.Linear) and t in TYPES and fallback(t, lin.in_features) in TYPES:
                types_of[name] = t
    if not types_of:
        raise EdgeLLMError(f"--quantizer gptq has no quantized type to round onto (--gguf-type {cfg.gguf_type})",
                           "use a quantized --gguf-type such as q4_k, or a budget (--target-bpw)")
    c = cfg.calib
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and c.seq_len > limit:
        raise EdgeLLMError(f"calibration seq_len {c.seq_len} is beyond the model's maximum position ({limit})",
                           f"use --calib-seq-len {limit} or less")
    ids = calibration_windows(loaded.tokenizer, resolve_data_path(c.data), c.samples, c.seq_len, c.seed)
    work = copy.deepcopy(model).float().eval()
    hname = head_name(work)
    head_type = pinned.get(hname, cfg.embedding) if hname else None
    head = work.get_output_embeddings() if hname else None
    if head_type is not None and (head_type not in TYPES or head_type == "q8_0"
                                  or fallback(head_type, head.in_features) not in TYPES):
        head_type = None                    # float, Q8_0 (near-lossless) or untileable: the writer's RTN/float
    codes, info = quantize_blocks(work, types_of, ids, awq_prescale=cfg.awq_prescale, head_type=head_type,
                                  progress=progress)
    return work, codes, info


__all__ = ["GridGPTQ", "awq_grid_scale", "gptq_onto_grid", "head_name", "hessian_error", "quantize_blocks",
           "quantize_model"]
