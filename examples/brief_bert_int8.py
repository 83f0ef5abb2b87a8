"""The brief's example, for real: a BERT sequence classifier quantized to 8 bits in one call.

The brief shows ``model.quantize(8)``, which transformers does not have. Here: load MiniLM-L6
(a 6-layer BERT) with a 2-label classification head, ``edgellm.quantize(model, bits=8)``, and
classify a sentence. The head is freshly initialised (no fine-tuning here), so the labels are
arbitrary; the point is that inference runs on int8 kernels and the linear weights shrink ~4×.

Run: .venv/bin/python examples/brief_bert_int8.py
"""

import torch

import edgellm

m = edgellm.load("minilm-l6", task="classification", num_labels=2)
enc = m.tokenizer(["Turn on the living-room light.", "Play some light music."], return_tensors="pt", padding=True)
with torch.no_grad():
    before = m.model(**enc).logits

m, res = edgellm.quantize(m, bits=8)          # the one-liner: RTN, 8-bit per-channel, int8 kernel
with torch.no_grad():
    after = m.model(**enc).logits

print(f"quantized {res.n_linears} linears in {res.seconds:.2f}s, kernels {res.kernels}")
print(f"linear weight bytes: {res.bytes_before / 2**20:.1f} MiB -> {res.bytes_after / 2**20:.1f} MiB "
      f"({res.bytes_before / res.bytes_after:.2f}x smaller, {res.bits_per_weight:.2f} bits/weight)")
print("logits fp32:", before.numpy().round(4).tolist())
print("logits int8:", after.numpy().round(4).tolist())
print("same predicted labels:", bool((before.argmax(-1) == after.argmax(-1)).all()))
