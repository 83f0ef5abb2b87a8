"""How much the loss rises when one tensor of a GGUF mix is written as one type: the mix's sensitivities.

Every tensor's error is ``E = W − Q_t(W)``, with ``Q_t`` exactly the round-to-nearest the exporter writes
(``gguf_types.rtn``, onto the type's own grid, llama.cpp's fallback type where the rows cannot take ``t``).
How ``E`` becomes a predicted loss is the ``sensitivity`` of ``GGUFExportConfig``:

**hessian** (the default). One calibration pass (``calibrate.run_blockwise``, the model unchanged)
accumulates each linear's input Hessian ``H = 2/n Σ xᵀx``; the predicted loss is the layer's output MSE
on the calibration inputs, ``err = Σ_rows E H Eᵀ = 2 · mean ‖E x‖²``. The output head's ``H`` is the final
norm's output covariance; the token embedding's error is the output MSE of its lookups,
``2/n Σ_token count·‖e_token‖²``; a tied embedding/head adds both. Errors of different layers are summed
as if equally important to the loss, which they are not: an error in a layer whose outputs the rest of the
network damps costs less than the same error where it is amplified.

**fisher**. The same errors, each output channel weighted by the loss's own curvature there. One more
pass runs forward and backward over the calibration windows and keeps, per linear output channel ``j``,
``F_j = mean over tokens of g_j²``, ``g`` the gradient of the windows' summed next-token loss with respect
to that output (the empirical Fisher, diagonal in the outputs); for the embedding, ``G[v, d]`` sums
``g_d²`` over the positions that look token ``v`` up, divided by the token count. With the input
Hessian this is a Kronecker model of the loss's curvature (as in K-FAC and GuidedQuant), and the
second-order loss rise of the error is

    ΔL ≈ ½ Σ_j F_j · mean (E x)_j²  =  ¼ Σ_j F_j (E H Eᵀ)_jj        (a linear, and the head)
    ΔL ≈ ½ Σ_{v,d} G[v, d] · E[v, d]²                               (the embedding's lookups)

in the loss's own units (nats per token), so layers are compared on one scale. Stated approximations:
the diagonal of the output Fisher (channels independent), gradients and inputs independent, and the
gradient taken at the float model. Cost: one backward per calibration window, about twice its forward.
"""

from __future__ import annotations

import torch
from torch import nn

from .gguf_types import fallback, rtn

SENSITIVITIES = ("hessian", "fisher")


def effective_type(qtype: str, shape) -> str:
    """The type a tensor of *shape* is written as when *qtype* is asked (llama.cpp's fallback for 2-D rows)."""
    return fallback(qtype, shape[-1]) if len(shape) == 2 else "f32"


def quantized_weight(W: torch.Tensor, qtype: str) -> torch.Tensor:
    """What llama.cpp reconstructs from *W* [out, in] written as *qtype* (already a type the rows can take)."""
    if qtype == "f32":
        return W
    if qtype == "f16":
        return W.half().float()
    return rtn(W, qtype).dequantize()


def tensor_errors(W: torch.Tensor, qtypes, H: torch.Tensor | None = None, counts: torch.Tensor | None = None,
                  out_fisher: torch.Tensor | None = None, lookup_fisher: torch.Tensor | None = None) -> dict:
    """Effective type -> predicted loss of writing *W* [out, in] as each of *qtypes* (fallbacks applied).

    ``H`` [in, in]: ``Σ_rows E H Eᵀ`` (a linear's output MSE), or with ``out_fisher`` [out] the Fisher-weighted
    ``¼ Σ_j F_j (E H Eᵀ)_jj``; ``counts`` [out]: ``2/n Σ count·‖E_row‖²`` (an embedding's lookups), or with
    ``lookup_fisher`` [out, in] ``½ Σ G ⊙ E²``. Both terms are added when both are given (a tied embedding/head).

    >>> W = torch.randn(8, 64); e = tensor_errors(W, ["q4_0", "q8_0"], H=torch.eye(64))
    >>> e["q8_0"] < e["q4_0"]
    True
    >>> f = tensor_errors(W, ["q4_0"], H=torch.eye(64), out_fisher=torch.full((8,), 4.0))
    >>> abs(f["q4_0"] - e["q4_0"]) < 1e-9 * e["q4_0"]            # F = 4 everywhere: ¼·4 = the unweighted sum
    True
    """
    W = W.detach().float()
    out = {}
    for t in dict.fromkeys(effective_type(q, W.shape) for q in qtypes):
        E = W - quantized_weight(W, t)
        err = 0.0
        if H is not None:
            rows = ((E @ H.float()) * E).sum(1, dtype=torch.float64)
            err += float(rows.sum() if out_fisher is None else (rows * out_fisher.double()).sum() / 4)
        if lookup_fisher is not None:
            err += float((lookup_fisher.double() * (E * E).double()).sum() / 2)
        elif counts is not None:
            err += float(2 * ((E * E).sum(1, dtype=torch.float64) * counts.double()).sum() / max(float(counts.sum()), 1.0))
        out[t] = err
    return out


def output_fisher(model: nn.Module, ids: torch.Tensor, linears: list[str], embedding: str | None = None) -> dict:
    """Mean squared loss gradient per output channel of each named linear, and per (token, dim) of *embedding*.

    *ids* [windows, seq]: calibration windows; the loss is each window's summed next-token cross-entropy.
    Returns ``{linear name: F [out_features]}`` and, when *embedding* is named, ``{embedding: G [vocab, dim]}``
    (sums over the positions looking each token up), all divided by the number of tokens. The model's
    parameters are left as they were (no ``.grad`` is kept); it runs in eval mode.

    >>> F = output_fisher(model, ids, ["model.layers.0.mlp.down_proj"], "model.embed_tokens")   # doctest: +SKIP
    >>> F["model.layers.0.mlp.down_proj"].shape                                                # doctest: +SKIP
    torch.Size([576])
    """
    mods = dict(model.named_modules())
    acc: dict[str, torch.Tensor] = {}
    handles = []

    def on_linear(name):
        def hook(mod, inp, out):
            def grad(g):
                s = (g.detach().float() ** 2).reshape(-1, g.shape[-1]).sum(0)
                acc[name] = acc[name] + s if name in acc else s
            out.register_hook(grad)
        return hook

    def on_embedding(mod, inp, out):
        out = out.detach().requires_grad_(True)     # the graph starts here: no weight gradients are kept
        tokens = inp[0].reshape(-1)

        def grad(g):
            G = acc.get(embedding)
            if G is None:
                G = acc[embedding] = torch.zeros(mod.weight.shape, dtype=torch.float32)
            G.index_add_(0, tokens, (g.detach().float() ** 2).reshape(-1, g.shape[-1]))
        out.register_hook(grad)
        return out

    emb = embedding or next(n for n, m in mods.items() if isinstance(m, nn.Embedding))
    handles.append(mods[emb].register_forward_hook(on_embedding))
    handles += [mods[n].register_forward_hook(on_linear(n)) for n in linears]
    was_training, flags = model.training, {p: p.requires_grad for p in model.parameters()}
    model.eval()
    n_tokens = 0
    try:
        for p in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            for w in ids:
                w = w.reshape(1, -1)
                logits = model(input_ids=w).logits.float()
                loss = nn.functional.cross_entropy(logits[0, :-1], w[0, 1:], reduction="sum")
                loss.backward()
                n_tokens += w.numel()
    finally:
        for h in handles:
            h.remove()
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was_training)
    out = {k: v / max(n_tokens, 1) for k, v in acc.items()}
    if embedding is None:
        out.pop(emb, None)
    return out


__all__ = ["SENSITIVITIES", "effective_type", "output_fisher", "quantized_weight", "tensor_errors"]
