"""LiteRT export: a one-layer tiny Llama, Qwen2/Qwen3/Gemma and a tiny BERT classifier converted by litert-torch
(in its own environment) reproduce PyTorch on the ai-edge-litert interpreter; bad input is one line, exit 2."""

import json
import sys

import pytest
import torch

from conftest import make_tiny_decoder, make_tiny_llama, run_cli
from edgellm.errors import EdgeLLMError
from edgellm.exporters import export
from edgellm.exporters.litert import LiteRTExportConfig, export_litert
from edgellm.exporters.litert_verify import fake_quantize_symmetric
from edgellm.models import load
from edgellm.runtimes import open_runtime

import ai_edge_litert.interpreter  # noqa: F401  (the litert extra: a missing one fails here, never skips)


@pytest.fixture(scope="module")
def llama1(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("lt") / "llama1", num_hidden_layers=1)


@pytest.fixture(scope="module")
def lm_fp32(llama1, tmp_path_factory):
    return export(llama1, "litert", tmp_path_factory.mktemp("tfl") / "lm.tflite", variant="fp32", max_len=96,
                  prefill_len=16, threads=2, ppl_tokens=1024)


def test_fp32_matches_torch_through_prefill_and_decode(llama1, lm_fp32):
    v = lm_fp32.verification
    assert v["passed"] and v["prompts"]["max_abs_rel"] < 1e-4 and abs(v["ppl"]["relative_diff"]) < 1e-4
    ref = open_runtime(load(llama1))
    rt = open_runtime(lm_fp32.path, threads=2)
    assert rt.name == "litert" and rt.max_positions == 96 and rt.threads == 2
    ids = torch.arange(5, 45)                                          # 40 tokens: the max_len prefill signature
    assert torch.allclose(rt.logits(ids), ref.logits(ids), atol=1e-4)
    assert list(rt.generate(ids, 16)) == list(ref.generate(ids, 16))    # decode through the cache
    short = torch.arange(7, 17)                                        # the 16-token signature, padded; stale rows masked
    assert torch.allclose(rt.logits(short), ref.logits(short), atol=1e-4)
    assert list(rt.generate(short, 8)) == list(ref.generate(short, 8))
    info = json.loads((lm_fp32.path / "edgellm.json").read_text())
    assert info["format"] == "edgellm-litert/1" and info["signatures"] == ["prefill_16", "prefill_96", "decode"]
    assert 0 < rt.weight_bytes() < rt.file_bytes()


def test_int8_is_verified_against_the_same_weights_and_is_smaller(llama1, lm_fp32, tmp_path):
    r = export(llama1, "litert", tmp_path / "lm8.tflite", variant="int8", max_len=96, prefill_len=16, threads=2,
               ppl_tokens=1024)
    v = r.verification
    assert v["passed"] and v["ppl"]["kl"] < 0.02 and v["vs_source"]["kl"] >= v["ppl"]["kl"]
    assert _lookup_table_dtype(r.path) == "int8"                      # the table too, rounded in the reference as well
    assert _head_weight_dtypes(r.path, 320) == {"head": "float32 from int8", "other": "int8"}   # the head weight-only
    assert open_runtime(r.path).weight_bytes() < 0.5 * open_runtime(lm_fp32.path).weight_bytes()
    assert r.file_bytes < 0.6 * lm_fp32.file_bytes
    ids = torch.arange(5, 25)
    rt, ref = open_runtime(r.path), open_runtime(load(llama1))
    assert sum(a == b for a, b in zip(rt.generate(ids, 8), ref.generate(ids, 8))) >= 6


def _lookup_table_dtype(folder) -> str:
    """The dtype of the table the token EMBEDDING_LOOKUP reads in *folder*'s ``model.tflite``."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(folder / "model.tflite"))
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = [op for op in it._get_ops_details() if op["op_name"] == "EMBEDDING_LOOKUP"]
    return {details[op["inputs"][1]]["dtype"].__name__ for op in ops}.pop()


def _head_weight_dtypes(folder, vocab: int) -> dict:
    """How the FULLY_CONNECTED ops of *folder*'s ``model.tflite`` get their weights: the output head (*vocab* rows)
    and the others; "float32 from int8" is an int8 constant through a DEQUANTIZE op (weight-only: fp32 input)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(folder / "model.tflite"))
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    made_by = {o: op for op in ops for o in op["outputs"]}
    kinds: dict = {}
    for op in ops:
        if op["op_name"] != "FULLY_CONNECTED":
            continue
        w = details[op["inputs"][1]]
        kind = w["dtype"].__name__
        src = made_by.get(op["inputs"][1])
        if src is not None and src["op_name"] == "DEQUANTIZE":
            kind = f"{kind} from {details[src['inputs'][0]]['dtype'].__name__}"
        kinds.setdefault("head" if int(w["shape"][0]) == vocab else "other", set()).add(kind)
    return {k: v.pop() for k, v in kinds.items() if len(v) == 1}


def test_the_head_input_rounding_is_a_choice_and_the_reference_follows_it(llama1):
    from edgellm.exporters.litert_verify import reference_for

    loaded = load(llama1)
    d = reference_for(loaded, LiteRTExportConfig(variant="int8")).model
    q = reference_for(loaded, LiteRTExportConfig(variant="int8", quantize_head_input=True)).model
    assert not d.lm_head._forward_pre_hooks and len(q.lm_head._forward_pre_hooks) == 1
    assert all(len(m._forward_pre_hooks) == 1 for m in d.modules() if isinstance(m, torch.nn.Linear) and m is not d.lm_head)
    ids = torch.arange(3, 23)[None]
    with torch.no_grad():
        assert not torch.equal(d(ids).logits, q(ids).logits)            # the head's rounding moves the logits


def test_int8_embedding_table_is_a_choice_and_the_reference_follows_it(llama1, lm_fp32, tmp_path):
    from edgellm.exporters.litert_verify import reference_for

    loaded = load(llama1)
    table = loaded.model.get_input_embeddings().weight
    q = reference_for(loaded, LiteRTExportConfig(variant="int8")).model                # default: the table rounded
    assert torch.equal(q.get_input_embeddings().weight, fake_quantize_symmetric(table, 8))
    assert torch.equal(q.get_input_embeddings().weight, q.lm_head.weight)
    f = reference_for(loaded, LiteRTExportConfig(variant="int8", quantize_embeddings=False)).model
    assert torch.equal(f.get_input_embeddings().weight, table)
    assert torch.equal(f.lm_head.weight, fake_quantize_symmetric(table, 8))             # the tied head: rounded, untied
    r = export(llama1, "litert", tmp_path / "f.tflite", variant="int8", quantize_embeddings=False, max_len=96,
               prefill_len=16, threads=2, ppl_tokens=512)
    assert r.verification["passed"] and _lookup_table_dtype(r.path) == "float32"
    assert r.file_bytes > lm_fp32.file_bytes         # the quantizer leaves fp32 buffers behind (see the exporter)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma"])
def test_other_families_convert_and_decode(family, tmp_path):
    """Qwen2 (Q/K/V biases), Qwen3 (Q/K RMSNorm per head, head_dim ≠ hidden / heads), Gemma (embedding × √hidden,
    norms 1 + w, GELU): one layer holds every one of these, and one prefill signature (max_len) with decode
    (conversion time grows with layers and signatures); the short padded signature is checked on the Llama above,
    the cache of several layers in tests/runtimes/test_litert_runtime.py."""
    src = make_tiny_decoder(tmp_path / family, family, num_hidden_layers=1)
    r = export(src, "litert", tmp_path / f"{family}.tflite", max_len=64, prefill_len=64, threads=2, ppl_tokens=256)
    assert r.verification["passed"] and r.verification["prompts"]["max_abs_rel"] < 1e-4
    ids = torch.arange(5, 30)
    assert list(open_runtime(r.path).generate(ids, 8)) == list(open_runtime(load(src)).generate(ids, 8))


TEXTS = ["a short one", "the plot is thin", "x", "another longer sentence with more words", "five", "six", "seven"]


@pytest.fixture(scope="module")
def sharp_cls(tiny_bert_cls, tmp_path_factory):
    """The tiny classifier with a 40x head whose bias splits TEXTS between the two labels (at the widest gap
    between their margins), so the check compares labels of both classes."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("cls") / "sharp"
    tok = AutoTokenizer.from_pretrained(tiny_bert_cls)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_cls).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(40)
        enc = tok(TEXTS, padding="max_length", max_length=32, return_tensors="pt")
        margin = model(**enc).logits @ torch.tensor([1.0, -1.0])                 # logit 0 - logit 1
        m = margin.sort().values
        gap = int((m[1:] - m[:-1]).argmax())                                   # split at the widest gap
        model.classifier.bias += torch.tensor([-0.5, 0.5]) * (m[gap] + m[gap + 1]) / 2
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_classifier_probabilities_and_labels(sharp_cls, tmp_path):
    r = export(sharp_cls, "litert", tmp_path / "cls.tflite", seq_len=32, batch_size=4, threads=2)
    assert r.verification["passed"] and r.verification["max_prob_diff"] < 1e-4
    rt = open_runtime(r.path, threads=2)
    ref = open_runtime(load(sharp_cls, task="classification"))
    p, q = rt.classify(TEXTS).softmax(-1), ref.classify(TEXTS, max_length=32).softmax(-1)   # 7 rows: batches 4, 4
    assert (p - q).abs().max() < 1e-4 and (p.argmax(-1) == q.argmax(-1)).all()
    assert len(set(q.argmax(-1).tolist())) == 2                               # the check has something to check
    with pytest.raises(EdgeLLMError, match="not a causal LM"):
        rt.logits(torch.arange(4))


def test_fake_quantize_matches_the_quantizer_rule():
    W = torch.tensor([[1.0, -0.6, 0.26, 0.0], [0.1, 0.2, -0.4, 0.05]])
    assert fake_quantize_symmetric(W, 2).tolist()[0] == [1.0, -1.0, 0.0, 0.0]      # scale max|w| / 1
    q = fake_quantize_symmetric(W, 4, block=2)
    assert torch.allclose(q[1, 2:], torch.tensor([-0.4, 0.0571428]), atol=1e-6)    # per block of 2: scale 0.4 / 7


def test_bad_input(tiny_bert, llama1, lm_fp32, tmp_path, monkeypatch):
    code, out, err = run_cli("export", str(tiny_bert), "--format", "litert", "--out", str(tmp_path / "e.tflite"))
    assert code == 2 and "LiteRT export does not support BertModel" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("export", str(llama1), "--format", "litert", "--max-len", "1024",
                             "--out", str(tmp_path / "long.tflite"))
    assert code == 2 and "longer than the model's 256 positions" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(EdgeLLMError, match="exceed the exported KV cache"):
        open_runtime(lm_fp32.path).logits(torch.arange(97) % 50)
    with pytest.raises(EdgeLLMError, match="unknown LiteRT variant"):
        LiteRTExportConfig(variant="int2")
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(EdgeLLMError) as e:
        export_litert(llama1, tmp_path / "m.tflite")
    assert "edgellm[litert]" in e.value.hint
    code, out, err = run_cli("eval", str(lm_fp32.path), "--max-tokens", "256", "--ctx", "32")
    assert code == 2 and "edgellm[litert]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.tflite").exists()
