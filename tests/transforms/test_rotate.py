"""rotate: the folded and rotated model computes the same logits, is a plain fp32 HF folder, exports to GGUF,
leaves its input alone, refuses what it cannot fold, and takes the weights off a privileged 4-bit grid."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_decoder, make_tiny_llama, run_cli
from torch import nn

import edgellm
from edgellm.errors import EdgeLLMError
from edgellm.families import family_of, find_blocks, projection
from edgellm.models import load, save
from edgellm.quantization.primitives import quantize_weight
from edgellm.transforms import RotateConfig, RotateResult, rotate
from edgellm.transforms.hadamard import random_rotation

IDS = torch.randint(3, 300, (2, 40), generator=torch.Generator().manual_seed(1))
ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def folder_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def with_random_gains(loaded):
    """Norm gains away from 1, so an unfolded or misplaced gain changes the logits."""
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("model.norm.weight"):
                p.uniform_(-0.5, 0.5) if family_of(loaded).norm_offset else p.uniform_(0.5, 1.5)
    return loaded


MODELS = {
    "llama-64": lambda p: make_tiny_llama(p, hidden_size=64, intermediate_size=128),   # power of two: Sylvester
    "llama-72": lambda p: make_tiny_llama(p, hidden_size=72, intermediate_size=144),   # 2 x Paley II 36
    "llama-96": lambda p: make_tiny_llama(p),                                          # 8 x Paley I 12
    "qwen3": lambda p: make_tiny_decoder(p, "qwen3"),          # per-head Q/K norms, off the residual stream
    "qwen2": lambda p: make_tiny_decoder(p, "qwen2"),          # Q/K/V biases
    "mistral": lambda p: make_tiny_decoder(p, "mistral"),      # untied head
    "gemma": lambda p: make_tiny_decoder(p, "gemma"),          # norms scale by 1 + w (registry norm_offset)
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            made[name] = MODELS[name](tmp_path_factory.mktemp("rot") / name)
        return made[name]

    return get


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_are_preserved_to_1e_4(folders, name):
    loaded = with_random_gains(load(folders(name)))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ref = logits(loaded.model)
    rotated, r = rotate(loaded, RotateConfig(seed=3))
    assert isinstance(r, RotateResult) and r.to_dict()["seed"] == 3
    assert float((logits(rotated.model) - ref).abs().max()) < 1e-4
    assert r.max_logit_diff < 1e-4 and r.orthogonality_error < 1e-12
    assert r.untied == (name != "mistral") and not rotated.model.config.tie_word_embeddings
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in before.items())   # the input is untouched
    spec = family_of(loaded)
    for old, new in zip(find_blocks(loaded.model)[1], find_blocks(rotated.model)[1]):
        for role in ROLES:
            assert not torch.allclose(projection(old, spec, role).weight, projection(new, spec, role).weight)
        for role in ("input_norm", "post_attention_norm"):        # gains folded: the norm scales by exactly 1
            assert torch.all(projection(new, spec, role).weight + spec.norm_offset == 1)
        for role in ("q_norm", "k_norm"):                          # per-head, not on the residual: unchanged
            if spec.role(role):
                assert torch.equal(projection(old, spec, role).weight, projection(new, spec, role).weight)


def test_the_fold_is_the_transform_the_docstring_states(folders):
    """Embedding E Q, readers W diag(g) Q, writers Qᵀ W: checked on the weights directly."""
    loaded = with_random_gains(load(folders("llama-96")))
    rotated, r = rotate(loaded, RotateConfig(seed=7, probe_tokens=0))
    assert r.max_logit_diff is None
    Q = random_rotation(96, seed=7)[0]
    m0, m1 = loaded.model.model, rotated.model.model
    assert torch.allclose(m1.embed_tokens.weight.double(), m0.embed_tokens.weight.double() @ Q, atol=1e-6)
    b0, b1 = m0.layers[1], m1.layers[1]
    g = b0.input_layernorm.weight.double()
    assert torch.allclose(b1.self_attn.k_proj.weight.double(), (b0.self_attn.k_proj.weight.double() * g) @ Q, atol=1e-6)
    assert torch.allclose(b1.mlp.down_proj.weight.double(), Q.T @ b0.mlp.down_proj.weight.double(), atol=1e-6)
    assert torch.allclose(rotated.model.lm_head.weight.double(),
                          (m0.embed_tokens.weight.double() * m0.norm.weight.double()) @ Q, atol=1e-6)
    assert rotated.model.lm_head.weight.data_ptr() != m1.embed_tokens.weight.data_ptr()


def test_saved_folder_is_plain_hf_and_loads_back(folders, tmp_path):
    src = folders("llama-72")
    h = folder_hash(src)
    loaded = load(src)
    rotated, r = rotate(loaded)
    out = save(rotated, tmp_path / "rot")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and "format" not in cfg.get("edgellm", {})
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert {"lm_head.weight", "model.embed_tokens.weight"} <= keys
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()                # plain transformers reads it
    back = load(out)
    assert back.tokenizer is not None and back.meta.dtype == "float32"
    assert float((logits(back.model) - logits(loaded.model)).abs().max()) < 1e-4
    assert torch.equal(logits(hf), logits(back.model))
    assert folder_hash(src) == h


def test_cli_rotates_and_leaves_the_input_alone(folders, tmp_path):
    src = folders("qwen3")
    h = folder_hash(src)
    out = tmp_path / "q3-rot"
    code, stdout, err = run_cli("rotate", src, "--out", out, "--seed", 5, "--json", tmp_path / "r.json")
    assert code == 0, err
    assert "paley-I 12" in stdout and f"wrote {out}" in stdout
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["config"]["seed"] == 5 and res["result"]["max_logit_diff"] < 1e-4
    assert json.loads((out / "config.json").read_text())["edgellm"]["rotation"]["seed"] == 5
    assert float((logits(load(out).model) - logits(load(src).model)).abs().max()) < 1e-4
    assert folder_hash(src) == h
    code, _, err = run_cli("rotate", src, "--out", out)                  # exists, no --force
    assert code == 2 and len(err.strip().splitlines()) == 1 and "already exists" in err
    assert run_cli("rotate", src, "--out", out, "--force")[0] == 0


def test_bad_inputs_exit_2_with_one_line(folders, tiny_bert, tmp_path):
    from edgellm.pruning import PruneConfig, prune
    from edgellm.quantization import QuantConfig, quantize

    q = load(folders("llama-64"))
    quantize(q, QuantConfig(bits=4, group_size=32), progress=False)
    qdir = save(q, tmp_path / "q4")
    p = load(folders("llama-64"))
    prune(p, PruneConfig(method="magnitude", sparsity=0.5), progress=False)
    pdir = save(p, tmp_path / "sparse", format="sparse")
    cases = {tiny_bert: "norms cannot be folded", qdir: "already quantized", pdir: "pruned (a sparse folder)"}
    for src, words in cases.items():
        code, out, err = run_cli("rotate", src, "--out", tmp_path / "never")
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    code, _, err = run_cli("rotate", folders("llama-64"), "--out", tmp_path / "never", "--seed", "-1")
    assert code == 2 and "seed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_norms_that_do_not_commute_are_refused(folders):
    loaded = load(folders("llama-64"))
    loaded.model.model.layers[1].post_attention_layernorm = nn.LayerNorm(64, bias=False)   # mean subtraction
    with pytest.raises(EdgeLLMError, match="norms cannot be folded"):
        rotate(loaded)
    loaded.model.model.layers[1].post_attention_layernorm = nn.LayerNorm(64)                # and a bias
    with pytest.raises(EdgeLLMError, match="not a gain-only RMSNorm"):
        rotate(loaded)
    with pytest.raises(EdgeLLMError, match="RotateConfig"):
        rotate(loaded, {"seed": 1})
    with pytest.raises(EdgeLLMError, match="tolerance"):
        RotateConfig(tolerance=0)


def test_gguf_export_of_the_rotated_model_verifies_in_llamacpp(folders, tmp_path):
    from edgellm.exporters import export

    rotated, _ = rotate(with_random_gains(load(folders("llama-96"))), RotateConfig(seed=1))
    r = export(rotated, "gguf", tmp_path / "rot.gguf", gguf_type="f32", threads=2, ppl_tokens=512)
    assert r.verification["passed"] and r.verification["ppl"]["kl"] < 1e-5
    assert r.details["tensor_types"]["f32"] >= 2 + 7 * 3                # lm_head written apart from the embedding


def test_rotation_takes_weights_off_the_asymmetric_4bit_g32_grid(folders):
    """The point: weights put exactly on a Q4_1-style grid quantize losslessly with asymmetric RTN g32; rotated, not."""
    loaded = load(folders("llama-96"))
    spec = family_of(loaded)

    def rtn_error(model):
        errs = []
        for block in find_blocks(model)[1]:
            for role in ROLES:
                W = projection(block, spec, role).weight.detach()
                Wq = quantize_weight(W, bits=4, group_size=32, symmetric=False).dequantize()
                errs.append(float((Wq - W).abs().max() / W.abs().max()))
        return min(errs), max(errs)

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in find_blocks(loaded.model)[1]:
            for role in ROLES:        # W = s (c − z): fp16 scale s, codes c spanning 0..15, integer zero z per group
                W = projection(block, spec, role).weight
                out, k = W.shape
                c = torch.randint(0, 16, (out, k // 32, 32), generator=g).float()
                c[..., 0], c[..., 1] = 0, 15
                z = torch.randint(1, 15, (out, k // 32, 1), generator=g).float()
                s = (0.004 + 0.004 * torch.rand(out, k // 32, 1, generator=g)).half().float()
                W.copy_((s * (c - z)).reshape(out, k))
    assert rtn_error(loaded.model)[1] == 0.0                              # on the grid: lossless
    rotated, r = rotate(loaded)
    assert r.max_logit_diff < 1e-4
    assert rtn_error(rotated.model)[0] > 0.01                            # every rotated linear loses > 1% of its range


def test_public_api():
    assert edgellm.rotate is rotate and edgellm.RotateConfig is RotateConfig and edgellm.RotateResult is RotateResult


def test_rotated_builtin_is_built_once_into_the_cache(folders, tmp_path, monkeypatch):
    """``smollm2-135m-rotated`` is the shipped model rotated with seed 0; shown here on a tiny stand-in."""
    import edgellm.models as models
    import edgellm.optimization.cache as search_cache
    from edgellm.modelfiles import BUILTINS, BuiltinModel
    from edgellm.runtimes.llamacpp import gguf_path

    real = BUILTINS["smollm2-135m-rotated"]
    assert real.rotate_seed == 0 and real.relative == BUILTINS["smollm2-135m"].relative
    src = folders("llama-96")
    monkeypatch.setenv("EDGELLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(BUILTINS, "tiny-plain", BuiltinModel("x", "x", "m", "causal-lm", "tiny"))
    monkeypatch.setitem(BUILTINS, "tiny-rotated", BuiltinModel("x", "x", "m", "causal-lm", "tiny", rotate_seed=0))
    monkeypatch.setattr(models, "builtin_path", lambda name: src)
    a = load("tiny-rotated")
    folder = Path(a.meta.source)
    assert folder.parent == tmp_path / "cache" / "rotated" and a.meta.kind == "builtin" and "rotated once" in a.meta.origin
    assert json.loads((folder / "config.json").read_text())["edgellm"]["rotation"]["seed"] == 0
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    b = load("tiny-rotated")                                               # from the cache, not built again
    assert b.meta.source == a.meta.source and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    plain = load(src)
    assert float((logits(b.model) - logits(plain.model)).abs().max()) < 1e-4
    assert not torch.allclose(b.model.model.embed_tokens.weight, plain.model.model.embed_tokens.weight)
    monkeypatch.setattr(search_cache, "builtin_path", lambda name: src)   # optimize's cache tells the two apart
    assert search_cache.model_fingerprint("tiny-rotated") != search_cache.model_fingerprint("tiny-plain")
    with pytest.raises(EdgeLLMError, match="no GGUF file of its own"):
        gguf_path("smollm2-135m-rotated")
