"""The mix's loss-aware sensitivity: the output Fisher equals brute-force autograd, leaves the model as it
was, and weighs each output channel's error in the loss's units; a Fisher-weighted mix fits its budget."""

from __future__ import annotations

import pytest
import torch

from edgellm.exporters.gguf_sensitivity import output_fisher, quantized_weight, tensor_errors


def _brute_force(model, ids, linear: str, embedding: str):
    """Squared output gradients by retain_grad on every window, summed and divided by the token count."""
    mods = dict(model.named_modules())
    seen = {}

    def keep(name):
        def hook(mod, inp, out):
            out.retain_grad()
            seen[name] = (inp[0], out)
        return hook

    hs = [mods[linear].register_forward_hook(keep(linear)), mods[embedding].register_forward_hook(keep(embedding))]
    F, G = 0, torch.zeros_like(mods[embedding].weight)
    try:
        for w in ids:
            w = w.view(1, -1)
            logits = model(input_ids=w).logits
            torch.nn.functional.cross_entropy(logits[0, :-1], w[0, 1:], reduction="sum").backward()
            F = F + (seen[linear][1].grad ** 2).reshape(-1, seen[linear][1].shape[-1]).sum(0)
            g = seen[embedding][1].grad.reshape(-1, G.shape[1])
            G.index_add_(0, w.view(-1), g ** 2)
    finally:
        for h in hs:
            h.remove()
        model.zero_grad(set_to_none=True)
    return F / ids.numel(), G / ids.numel()


def test_output_fisher_equals_autograd_and_leaves_the_model_as_it_was(tiny_llama):
    from edgellm.models import load

    m = load(tiny_llama).model
    torch.manual_seed(0)
    ids = torch.randint(0, m.config.vocab_size, (3, 24))
    lin, emb = "model.layers.1.mlp.down_proj", "model.embed_tokens"
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    got = output_fisher(m, ids, [lin, "lm_head"], emb)
    assert set(got) == {lin, "lm_head", emb}
    assert got[lin].shape == (m.config.hidden_size,) and got[emb].shape == m.model.embed_tokens.weight.shape
    assert all(p.grad is None for p in m.parameters())
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    F, G = _brute_force(m, ids, lin, emb)
    torch.testing.assert_close(got[lin], F, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(got[emb], G, rtol=1e-4, atol=1e-10)
    assert set(torch.nonzero(got[emb].sum(1)).flatten().tolist()) <= set(ids.flatten().tolist())   # only looked-up rows
    assert "model.embed_tokens" not in output_fisher(m, ids[:1], [lin])                           # asked for: linears only


def test_fisher_weights_each_output_channels_error():
    torch.manual_seed(0)
    W, X = torch.randn(16, 64), torch.randn(200, 64)
    H = 2 / X.shape[0] * X.T @ X
    F = torch.rand(16)
    E = W - quantized_weight(W, "q4_0")
    want = 0.5 * float((F * ((X @ E.T) ** 2).mean(0)).sum())          # ½ Σ_j F_j · mean (E x)_j²
    assert tensor_errors(W, ["q4_0"], H=H, out_fisher=F)["q4_0"] == pytest.approx(want, rel=1e-4)
    only = torch.zeros(16)
    only[3] = 1.0                                                        # one channel matters: its error alone
    assert tensor_errors(W, ["q4_0"], H=H, out_fisher=only)["q4_0"] == pytest.approx(
        0.5 * float(((X @ E[3]) ** 2).mean()), rel=1e-4)
    G = torch.rand(16, 64)
    assert tensor_errors(W, ["q4_0"], counts=torch.ones(16), lookup_fisher=G)["q4_0"] == pytest.approx(
        0.5 * float((G * E * E).sum()), rel=1e-5)


def test_fisher_mix_fits_its_budget_and_says_how_it_was_measured(tiny_llama, tmp_path):
    from conftest import synthetic_text
    from edgellm.calibconfig import CalibConfig
    from edgellm.exporters.gguf import GGUFExportConfig, gguf_family, tensor_names, write_gguf
    from edgellm.exporters.gguf_mix import plan_mix
    from edgellm.models import load

    (tmp_path / "c.txt").write_text(synthetic_text(400, seed=3))
    m = load(tiny_llama)
    names = tensor_names(m.model, gguf_family(m.model))
    plans = {s: plan_mix(m, GGUFExportConfig(target_bpw=5.0, sensitivity=s, calib=CalibConfig(
        data=str(tmp_path / "c.txt"), samples=4, seq_len=48)), names=names, write=write_gguf) for s in ("hessian", "fisher")}
    for s, p in plans.items():
        assert p.sensitivity == s and p.predicted_bytes <= p.budget_bytes
        assert all(t["loss"] >= 0 for t in p.tensors.values())
    assert plans["fisher"].predicted_loss != pytest.approx(plans["hessian"].predicted_loss)    # another scale: nats


def test_unknown_sensitivity_is_refused():
    from edgellm.errors import EdgeLLMError
    from edgellm.exporters.gguf import GGUFExportConfig

    with pytest.raises(EdgeLLMError, match="sensitivity"):
        GGUFExportConfig(target_bpw=4.5, sensitivity="magic")
