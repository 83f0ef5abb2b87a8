"""The family registry drives every subsystem: a family added to the registry only (no other table) is
found by the calibration runner, AWQ, the GGUF writer and the pipeline stage builder; unknown families
are clean errors; docs/families.md is the registry's table."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edgellm import families
from edgellm.calibrate import current_family, find_blocks, run_blockwise
from edgellm.errors import EdgeLLMError
from edgellm.families import FamilySpec, family_of, register, require, unregister

ROOT = Path(__file__).resolve().parents[1]


# -- a family whose blocks live elsewhere and whose modules have other names ----------------------------

class ToyBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.mixer = nn.ModuleDict({n: nn.Linear(d, d, bias=False) for n in ("wq", "wk", "wv", "wo")})
        self.ffn = nn.ModuleDict({"w_gate": nn.Linear(d, 2 * d, bias=False), "w_in": nn.Linear(d, 2 * d, bias=False),
                                  "w_out": nn.Linear(2 * d, d, bias=False)})

    def forward(self, h, **_):
        n, m = self.norm1(h), self.mixer
        h = h + m["wo"](m["wv"](n) + m["wq"](n) * m["wk"](n))
        n, f = self.norm2(h), self.ffn
        return (h + f["w_out"](nn.functional.silu(f["w_gate"](n)) * f["w_in"](n)),)


class ToyForCausalLM(nn.Module):
    base_model_prefix = "trunk"

    def __init__(self, d: int = 32, layers: int = 2, vocab: int = 64):
        super().__init__()
        self.config = SimpleNamespace(model_type="edgetoy", num_attention_heads=2, num_key_value_heads=2,
                                      tie_word_embeddings=False)
        self.trunk = nn.Module()
        self.trunk.embed = nn.Embedding(vocab, d)
        self.trunk.stack = nn.ModuleList([ToyBlock(d) for _ in range(layers)])
        self.trunk.out_norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids, use_cache=False):
        h = self.trunk.embed(input_ids)
        for block in self.trunk.stack:
            h = block(h)[0]
        return self.head(self.trunk.out_norm(h))


TOY = FamilySpec("edgetoy", blocks="stack", embed="embed", final_norm="out_norm", lm_head="head", rotary=None,
                 attention="mixer", mlp="ffn", q="mixer.wq", k="mixer.wk", v="mixer.wv", o="mixer.wo",
                 gate="ffn.w_gate", up="ffn.w_in", down="ffn.w_out", input_norm="norm1", post_attention_norm="norm2",
                 awq_folds=(("norm1", ("mixer.wq", "mixer.wk", "mixer.wv")), ("norm2", ("ffn.w_gate", "ffn.w_in"))),
                 gguf_arch="llama", rope_permute_qk=True, exporters=("gguf",))


@pytest.fixture
def toy_family():
    register(TOY)
    yield TOY
    unregister(TOY.model_type)


class Recorder:
    def __init__(self):
        self.names, self.families = [], []

    def new_stats(self, name, linear):
        self.names.append(name)
        return None

    def apply_block(self, index, block, stats, inputs):
        self.families.append(current_family().model_type)


def test_unknown_family_is_a_clean_error_naming_the_supported_ones():
    with pytest.raises(EdgeLLMError) as e:
        find_blocks(ToyForCausalLM())
    assert "'edgetoy'" in str(e.value) and "llama" in str(e.value) and "qwen3" in str(e.value)
    assert e.value.hint and "families.py" in e.value.hint
    with pytest.raises(EdgeLLMError, match="supported model types: llama, mistral, qwen2, qwen3"):
        require(ToyForCausalLM(), "gguf", "GGUF export")
    with pytest.raises(EdgeLLMError, match="already registered"):
        register(family_of("llama"))


def test_calibration_runner_and_gguf_names_follow_the_registry(toy_family):
    from edgellm.exporters.gguf import GGUFExportConfig, plan_tensors, unpermute_qk

    torch.manual_seed(0)
    model = ToyForCausalLM().eval()
    assert find_blocks(model)[0] == "trunk.stack"
    rec = Recorder()
    run_blockwise(model, torch.randint(0, 64, (2, 8)), rec, progress=False)
    assert sorted(set(rec.names)) == ["ffn.w_gate", "ffn.w_in", "ffn.w_out", "mixer.wk", "mixer.wo", "mixer.wq",
                                      "mixer.wv"]
    assert rec.families == ["edgetoy", "edgetoy"]
    with torch.no_grad():
        plans, by_hf = plan_tensors(model, GGUFExportConfig(gguf_type="f32"))
    assert by_hf["trunk.stack.1.mixer.wq.weight"].name == "blk.1.attn_q.weight"
    assert by_hf["trunk.stack.0.ffn.w_in.weight"].name == "blk.0.ffn_up.weight"
    assert by_hf["trunk.stack.0.norm2.weight"].name == "blk.0.ffn_norm.weight"
    assert {by_hf[k].name for k in ("trunk.embed.weight", "trunk.out_norm.weight", "head.weight")} == \
        {"token_embd.weight", "output_norm.weight", "output.weight"}
    q = model.trunk.stack[0].mixer["wq"].weight
    written = torch.from_numpy(by_hf["trunk.stack.0.mixer.wq.weight"].data)
    assert not torch.equal(written, q) and torch.equal(unpermute_qk(written, 2), q)   # rope_permute_qk honoured


def test_awq_folds_come_from_the_registry(toy_family):
    from edgellm.quantization.awq import AWQMethod

    torch.manual_seed(0)
    model = ToyForCausalLM().eval()
    targets = {f"trunk.stack.{i}.{n}": m for i, b in enumerate(model.trunk.stack) for n, m in b.named_modules()
               if isinstance(m, nn.Linear)}
    cfg = SimpleNamespace(bits=4, group_size=32, symmetric=True, awq_grid=4, awq_tokens=64, seed=0,
                          calib=SimpleNamespace(seed=0), clip_search=False)
    method = AWQMethod(targets, cfg, lambda *a: None)
    run_blockwise(model, torch.randint(0, 64, (2, 8)), method, progress=False)
    assert [e["producer"] for e in method.log] == ["norm1", "norm2"] * 2


@pytest.fixture
def fake_llama(tmp_path):
    """A tiny Llama whose model_type is 'edgefake' (registered with transformers, not with edgellm)."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from conftest import make_tiny_llama

    class EdgeFakeConfig(LlamaConfig):
        model_type = "edgefake"

    class EdgeFakeForCausalLM(LlamaForCausalLM):
        config_class = EdgeFakeConfig

    AutoConfig.register("edgefake", EdgeFakeConfig, exist_ok=True)
    AutoModelForCausalLM.register(EdgeFakeConfig, EdgeFakeForCausalLM, exist_ok=True)
    src = make_tiny_llama(tmp_path / "src")
    model = EdgeFakeForCausalLM.from_pretrained(src).eval()
    model.save_pretrained(tmp_path / "fake")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "fake")
    return tmp_path / "fake"


def test_pipeline_and_gguf_take_a_family_added_to_the_registry_only(fake_llama, tmp_path):
    from edgellm.exporters.gguf import export_gguf_report
    from edgellm.models import load
    from edgellm.parallel.stage import load_stage

    loaded = load(fake_llama)
    assert loaded.model.config.model_type == "edgefake"
    with pytest.raises(EdgeLLMError, match="pipeline parallelism does not support"):
        load_stage(fake_llama, 0, 2)
    with pytest.raises(EdgeLLMError, match="GGUF export does not support"):
        export_gguf_report(loaded, tmp_path / "x.gguf", gguf_type="f32")
    register(dataclasses.replace(family_of("llama"), model_type="edgefake"))
    try:
        ids = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = loaded.model(input_ids=ids).logits
            s0, s1 = load_stage(fake_llama, 0, 2), load_stage(fake_llama, 1, 2)
            got = s1.forward(s0.forward(ids, None), None)
        assert s0.layers.start == 0 and s0.layers.stop == s1.layers.start and s1.layers.stop == 3
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        out, report = export_gguf_report(loaded, tmp_path / "fake.gguf", gguf_type="f32")
        assert report.architecture == "llama" and report.how == {"float": report.how["float"]}
        import llama_cpp
        llm = llama_cpp.Llama(str(out), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
        llm.eval(ids[0].tolist())
        cpp = torch.tensor(llm.scores[:ids.shape[1]])
        assert (cpp.argmax(-1) == ref[0].argmax(-1)).all()
        torch.testing.assert_close(cpp, ref[0], rtol=1e-3, atol=1e-3)
    finally:
        unregister("edgefake")


def test_spec_validation():
    with pytest.raises(EdgeLLMError, match="claims structured"):
        FamilySpec("x", q=None, structured=True)
    with pytest.raises(EdgeLLMError, match="unknown exporter"):
        FamilySpec("x", exporters=("tflite",))
    with pytest.raises(EdgeLLMError, match="no gguf_arch"):
        FamilySpec("x", exporters=("gguf",))
    assert family_of("qwen3").runtimes == ("torch", "llama.cpp", "onnxruntime", "executorch", "litert")


def test_docs_table_is_generated_from_the_registry():
    text = (ROOT / "docs" / "families.md").read_text()
    assert families.render_doc(text) == text, "docs/families.md is stale: python -m edgellm.families --write docs/families.md"
    for spec in families.FAMILIES.values():
        assert f"`{spec.model_type}`" in text


# -- Gemma, the family added as one registry entry: its CPU-side subsystems --------------------------------
# (GGUF, ONNX, ExecuTorch, the pipeline and structured pruning run it in their own test files)

@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    from conftest import make_tiny_decoder, synthetic_text

    from edgellm.models import load

    path = make_tiny_decoder(tmp_path_factory.mktemp("gemma") / "gemma", "gemma")
    ids = load(path).tokenizer(synthetic_text(40, seed=7))["input_ids"][:96]     # text unseen in calibration
    return SimpleNamespace(path=path, ids=torch.tensor([ids]))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_awq_folds_into_gemma_norms_keep_the_float_model(tiny_gemma):
    """AWQ folds 1/s into Gemma's norms as (1 + w)/s - 1 (norm_offset = 1): the float model is unchanged."""
    from edgellm.models import load
    from edgellm.quantization.awq import AWQMethod

    model = load(tiny_gemma.path).model
    ref = _logits(model, tiny_gemma.ids)
    targets = {f"model.layers.{i}.{n}": m for i, b in enumerate(model.model.layers) for n, m in b.named_modules()
               if isinstance(m, nn.Linear)}
    cfg = SimpleNamespace(bits=3, group_size=32, symmetric=False, awq_grid=10, awq_tokens=256,
                          calib=SimpleNamespace(seed=0), clip_search=False)
    method = AWQMethod(targets, cfg, lambda *a: None)      # folds the scales, swaps nothing
    run_blockwise(model, tiny_gemma.ids, method, progress=False)
    folds = [e for e in method.log if e["producer"].endswith("layernorm")]
    assert len(folds) == 4 and all(e["error"] < e["rtn_error"] for e in folds)   # non-trivial scales were folded
    err = _rel(_logits(model, tiny_gemma.ids), ref)
    assert err < 1e-5, err


def _quantized_error(gemma, bits: int, method: str, calib: dict) -> float:
    from edgellm.models import load
    from edgellm.quantization import quantize, quantized_linears

    m = load(gemma.path)
    ref = _logits(m.model, gemma.ids)
    _, res = quantize(m, bits=bits, group_size=32, method=method, progress=False, **calib)
    assert res.n_linears == 14 and len(quantized_linears(m.model)) == 14          # 2 blocks x 7 projections
    return _rel(_logits(m.model, gemma.ids), ref)


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_gemma_quantizes_close_to_float(tiny_gemma, text_file, method):
    calib = {} if method == "rtn" else dict(calib=str(text_file), calib_samples=8, calib_len=64)
    err8, err4 = (_quantized_error(tiny_gemma, bits, method, calib) for bits in (8, 4))
    assert err8 < 0.012 and err4 < 0.13, (err8, err4)            # relative logit error (RTN: 0.0072, 0.115)
    if method != "rtn":                                          # calibrated methods beat RTN on unseen text
        assert err4 < _quantized_error(tiny_gemma, 4, "rtn", {}), err4


@pytest.mark.parametrize("cfg", ["wanda", "sparsegpt", "sparsegpt-2:4"])
def test_gemma_prunes_unstructured(tiny_gemma, text_file, cfg):
    from edgellm.calibconfig import CalibConfig
    from edgellm.models import load
    from edgellm.pruning import PruneConfig, prune

    method, _, pattern = cfg.partition("-")
    calib = CalibConfig(str(text_file), samples=8, seq_len=64)
    m = load(tiny_gemma.path)
    ref = _logits(m.model, tiny_gemma.ids)
    _, r = prune(m, PruneConfig(method=method, sparsity=0.5, pattern=pattern or None, calib=calib), progress=False)
    assert r.n_linears == 14 and r.achieved_sparsity == pytest.approx(0.5, abs=1e-9)
    mag = load(tiny_gemma.path)
    prune(mag, PruneConfig(method="magnitude", sparsity=0.5, pattern=pattern or None), progress=False)
    err, mag_err = _rel(_logits(m.model, tiny_gemma.ids), ref), _rel(_logits(mag.model, tiny_gemma.ids), ref)
    assert err < mag_err, (err, mag_err)          # calibrated pruning beats magnitude on the same model
