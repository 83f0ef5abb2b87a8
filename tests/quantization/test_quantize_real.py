"""The brief's example on the real MiniLM-L6 (slow): a 2-label BERT classifier, one-line 8-bit quantization."""

import pytest
import torch

import edgellm


@pytest.mark.slow
def test_brief_bert_int8_example(tmp_path):
    m = edgellm.load("minilm-l6", task="classification", num_labels=2)
    enc = m.tokenizer(["turn on the living-room light", "play some light music"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = m.model(**enc).logits
    m, res = edgellm.quantize(m, bits=8, progress=False)
    with torch.no_grad():
        out = m.model(**enc).logits
    assert res.n_linears == 6 * 6 + 1 + 1            # q,k,v,o,up,down per layer + pooler + classifier
    assert res.kernels == {"int8": res.n_linears}
    assert 3.8 < res.bytes_before / res.bytes_after < 4.0
    assert torch.allclose(out, ref, atol=0.02) and torch.equal(out.argmax(-1), ref.argmax(-1))
    folder = edgellm.quantization.save_quantized(m, tmp_path / "minilm-w8")
    with torch.no_grad():
        assert torch.equal(edgellm.load(folder).model(**enc).logits, out)
