"""quantize() end to end on tiny models: RTN, kernels, save/load bit-exact, CLI, bad input."""

import json
import warnings

import pytest
import torch
from torch import nn

import edgellm
from conftest import run_cli
from edgellm.errors import EdgeLLMError
from edgellm.quantization import QuantConfig, QuantizedLinear, quantize, quantized_linears
from edgellm.quantization.primitives import quantize_weight, sqnr_db
from edgellm.quantization.storage import save_quantized

IDS = torch.randint(3, 300, (1, 24), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("kw,kernel", [
    (dict(bits=8), "int8"), (dict(bits=8, symmetric=False), "int8"), (dict(bits=8, act_bits=8), "w8a8"),
    (dict(bits=4, group_size=32), "int4"), (dict(bits=4, group_size=64, symmetric=False), "int4"),
    (dict(bits=3, group_size=32, symmetric=False), "int4"), (dict(bits=2, group_size=None), "int4"),
    (dict(bits=6, group_size=32), "dequant"), (dict(bits=8, group_size=32), "dequant"),
])
def test_layer_kernels_match_exact_dequantized_matmul(kw, kernel):
    torch.manual_seed(0)
    W, b, x = torch.randn(48, 576), torch.randn(48), torch.randn(2, 5, 576)
    qw = quantize_weight(W, kw["bits"], kw.get("group_size"), kw.get("symmetric", True))
    ql = QuantizedLinear.from_weight(qw, b, kw.get("act_bits"))
    assert ql.kernel_plan()[0] == kernel
    exact = nn.functional.linear(x, qw.dequantize(), b)
    # bf16 activations in the kernels cost ~50 dB; per-token int8 activations ~40 dB
    assert sqnr_db(exact, ql(x)) > (35 if kw.get("act_bits") else {2: 30, 3: 40}.get(kw["bits"], 45))
    assert torch.equal(ql.unpack().codes, qw.codes) and torch.equal(ql.unpack().scale, qw.scale)


def test_rtn_w8_one_liner_and_save_load_bit_exact(tiny_llama, tmp_path):
    m = edgellm.load(tiny_llama)
    ref = _logits(m.model)
    m, res = edgellm.quantize(m, bits=8, progress=False)
    q = quantized_linears(m.model)
    assert res.n_linears == len(q) == 3 * 7 and "lm_head" not in q
    assert res.kernels == {"int8": 21}
    assert 8.0 < res.bits_per_weight < 8.5 and res.bytes_before / res.bytes_after > 3.8
    out = _logits(m.model)
    assert sqnr_db(ref, out) > 25
    folder = save_quantized(m, tmp_path / "w8")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["edgellm"]["format"] == "quantized" and len(cfg["edgellm"]["layers"]) == 21
    assert (folder / "manifest.json").exists() and (folder / "tokenizer.json").exists()
    m2 = edgellm.load(folder)
    assert torch.equal(_logits(m2.model), out)
    assert m2.meta.edgellm["format"] == "quantized"
    with pytest.raises(EdgeLLMError, match="already quantized"):
        edgellm.quantize(m2, bits=4)
    with pytest.raises(EdgeLLMError, match="already quantized"):
        edgellm.quantize(m, bits=4)


@pytest.mark.parametrize("kw", [dict(bits=4, group_size=32), dict(bits=3, group_size=64, symmetric=False),
                                dict(bits=2, group_size=-1, symmetric=False), dict(bits=8, act_bits=8)])
def test_save_load_bit_exact_and_size_follows_bits(tiny_llama, tmp_path, kw):
    m = edgellm.load(tiny_llama)
    m, res = quantize(m, QuantConfig(**kw), progress=False)
    out = _logits(m.model)
    folder = save_quantized(m, tmp_path / "q")
    m2 = edgellm.load(folder)
    assert torch.equal(_logits(m2.model), out)
    for name, ql in quantized_linears(m.model).items():
        ql2 = m2.model.get_submodule(name)
        assert torch.equal(ql.qweight, ql2.qweight) and torch.equal(ql.scale, ql2.scale)
        assert ql.qweight.numel() == (ql.in_features * ql.out_features * kw["bits"] + 7) // 8


def test_asymmetric_8bit_is_the_minmax_path(tiny_llama):
    m = edgellm.load(tiny_llama)
    lin = m.model.model.layers[0].mlp.down_proj
    W = lin.weight.detach().clone()
    quantize(m, bits=8, symmetric=False, group_size=-1, include=("*layers.0.mlp.down_proj",), progress=False)
    qw = m.model.model.layers[0].mlp.down_proj.unpack()
    from edgellm.quantization.primitives import minmax_codes
    assert (qw.codes.float() - minmax_codes(W, 8).view_as(W)).abs().max() <= 1


def test_include_exclude_and_embeddings(tiny_llama, tmp_path):
    m = edgellm.load(tiny_llama)
    quantize(m, bits=4, group_size=32, exclude=("*.mlp.*",), progress=False)
    names = set(quantized_linears(m.model))
    assert names and not any(".mlp." in n for n in names)
    m = edgellm.load(tiny_llama)
    ref = _logits(m.model)
    _, res = quantize(m, bits=8, quantize_embeddings=True, progress=False)
    assert "lm_head" in quantized_linears(m.model)
    out = _logits(m.model)
    assert sqnr_db(ref, out) > 20
    folder = save_quantized(m, tmp_path / "emb")
    assert torch.equal(_logits(edgellm.load(folder).model), out)


def test_bert_classifier_w8(tiny_bert_cls):
    m = edgellm.load(tiny_bert_cls, task="classification")
    enc = m.tokenizer(["the movie was good", "the movie was awful"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = m.model(**enc).logits
    m, res = edgellm.quantize(m, bits=8, progress=False)
    with torch.no_grad():
        out = m.model(**enc).logits
    assert res.bytes_before / res.bytes_after > 3.8
    assert torch.allclose(out, ref, atol=0.05)


def test_bert_classifier_w4_two_output_head(tiny_bert_cls):
    """A 2-output head cannot use the int4 CPU kernel (N % 16 != 0): it must fall back, not crash."""
    m = edgellm.load(tiny_bert_cls, task="classification")
    enc = m.tokenizer(["the movie was good", "the movie was awful"], return_tensors="pt", padding=True)
    m, _ = edgellm.quantize(m, bits=4, group_size=32, symmetric=True, progress=False)
    head = m.model.classifier
    assert head.kernel_plan()[0] == "dequant" and "divisible by 16" in head.kernel_plan()[1]
    with torch.no_grad():
        out = m.model(**enc).logits
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_no_linear_layers_is_a_clear_error():
    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.e = nn.Embedding(10, 4)

    with pytest.raises(EdgeLLMError, match="no nn.Linear"):
        quantize(Emb(), bits=8)
    with pytest.raises(EdgeLLMError, match="leave no Linear"):
        quantize(nn.Sequential(nn.Linear(4, 4)), bits=8, include=("nothing*",))


def test_calibration_file_errors(tiny_llama, tmp_path):
    m = edgellm.load(tiny_llama)
    with pytest.raises(EdgeLLMError, match="not found"):
        quantize(m, method="gptq", bits=4, calib=str(tmp_path / "missing.txt"), progress=False)
    short = tmp_path / "short.txt"
    short.write_text("the light is on.\n")
    with pytest.raises(EdgeLLMError, match="fewer than one window"):
        quantize(m, method="gptq", bits=4, calib=str(short), calib_len=64, progress=False)
    assert not quantized_linears(m.model)          # nothing was changed


def test_fewer_windows_than_asked_warns_and_runs(tiny_llama, tmp_path):
    from conftest import synthetic_text

    text_file = tmp_path / "small.txt"
    text_file.write_text(synthetic_text(30, seed=2))
    m = edgellm.load(tiny_llama)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _, res = quantize(m, method="gptq", bits=4, group_size=32, calib=str(text_file), calib_samples=10_000,
                          calib_len=64, progress=False)
    assert any("using" in str(x.message) for x in w)
    assert res.n_linears == 21 and 0 < res.calib_tokens < 10_000 * 64


def test_cli_end_to_end(tiny_llama, text_file, tmp_path):
    out = tmp_path / "cli-w4"
    code, stdout, stderr = run_cli("quantize", tiny_llama, "--method", "gptq", "--bits", "4", "--group-size", "32",
                                   "--calib", text_file, "--calib-samples", "4", "--calib-len", "64", "--out", out,
                                   "--json", tmp_path / "r.json")
    assert code == 0, stderr
    assert "bits/weight" in stdout and (out / "model.quantized.safetensors").exists()
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["result"]["n_linears"] == 21 and r["result"]["kernels"] == {"int4": 21}
    code, stdout, stderr = run_cli("eval", out, "--ppl", text_file, "--ctx", "64", "--max-tokens", "256")
    assert code == 0, stderr
    # bad input: clean one-line errors, exit 2
    code, _, stderr = run_cli("quantize", tiny_llama, "--bits", "9", "--out", tmp_path / "x")
    assert code == 2 and "bits must be an integer from 2 to 8" in stderr
    code, _, stderr = run_cli("quantize", tiny_llama, "--group-size", "0", "--out", tmp_path / "x")
    assert code == 2 and "group size" in stderr
    code, _, stderr = run_cli("quantize", out, "--bits", "8", "--out", tmp_path / "y")
    assert code == 2 and "already quantized" in stderr
    code, _, stderr = run_cli("quantize", tiny_llama, "--method", "gptq", "--calib", tmp_path / "nope.txt",
                              "--out", tmp_path / "z")
    assert code == 2 and "not found" in stderr
