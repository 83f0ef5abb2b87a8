"""GPTQ is reproducible across fresh processes (issue 20, "Trust"): the same model, calibration data and
settings give the same bytes in two new interpreters whose ``PYTHONHASHSEED`` (so set and dict-of-str
order), heap layout (so every tensor's address) and safetensors' per-process Rust hash seed differ. Both
GPTQ paths are checked: ``quantize`` + ``save_quantized`` (the bytes of ``model.quantized.safetensors``;
act-order and AWQ's prescale included) and the GGUF exporter's ``--quantizer gptq``
(``gguf_gptq.quantize_model``: the packed blocks llama.cpp reads, with AWQ's prescale over consumers pinned
to two 16-level types, q4_0 and iq4_nl, a tie the prescale breaks by name).

Found with it: the safetensors header's two metadata keys came out in a per-process order (the codes were
equal, the files not), and the GGUF prescale took its grid from a set's iteration order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import hashlib, json, sys
from pathlib import Path
import torch
import edgellm
from edgellm.calibconfig import CalibConfig
from edgellm.exporters.gguf import GGUFExportConfig
from edgellm.exporters.gguf_gptq import quantize_model
from edgellm.exporters.gguf_types import pack
from edgellm.quantization import QuantConfig, quantize
from edgellm.quantization.storage import WEIGHTS_FILE, save_quantized

model_dir, text, pad, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
junk = [torch.empty(1 + 97 * pad), bytearray(4099 * pad)]      # shift the heap: tensors land at other addresses
torch.set_num_threads(1)
calib = CalibConfig(data=text, samples=6, seq_len=32)
out = {}

def digest(blobs):
    h = hashlib.sha256()
    for name, b in sorted(blobs.items()):
        h.update(name.encode())
        h.update(b)
    return h.hexdigest()

for label, cfg in {"gptq": QuantConfig(method="gptq", bits=4, group_size=32, calib=calib),
                   "gptq-act-order-awq": QuantConfig(method="gptq", bits=4, group_size=32, act_order=True,
                                                     static_groups=True, awq_prescale=True, calib=calib)}.items():
    loaded = edgellm.load(model_dir)
    quantize(loaded, cfg, progress=False)
    # saved three times: each safetensors write seeds its own Rust hash map, so an order it leaks varies within
    # a process too
    out[label] = sorted({hashlib.sha256((save_quantized(loaded, work / f"{label}-{i}") / WEIGHTS_FILE).read_bytes())
                         .hexdigest() for i in range(3)})

pins = ("model.layers.0.self_attn.q_proj.weight=q4_0", "model.layers.0.self_attn.k_proj.weight=iq4_nl",
        "model.layers.0.self_attn.v_proj.weight=q4_0", "model.layers.1.mlp.gate_proj.weight=iq4_nl")
for label, cfg in {"gguf": GGUFExportConfig(gguf_type="q4_0", quantizer="gptq", calib=calib),
                   "gguf-awq": GGUFExportConfig(gguf_type="q4_0", quantizer="gptq", awq_prescale=True, tensor_types=pins,
                                                calib=calib)}.items():
    _, codes, _ = quantize_model(edgellm.load(model_dir), cfg)
    out[label] = [digest({f"{n}:{tc.qtype}": pack(tc).tobytes() for n, tc in codes.items()})]
print(json.dumps(out))
"""


def _run(model, text, hash_seed: str, pad: int, work) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    work.mkdir()
    r = subprocess.run([sys.executable, "-c", CHILD, str(model), str(text), str(pad), str(work)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_gptq_gives_the_same_bytes_in_fresh_processes(tiny_llama, text_file, tmp_path):
    a = _run(tiny_llama, text_file, "0", pad=0, work=tmp_path / "a")
    b = _run(tiny_llama, text_file, "1", pad=7, work=tmp_path / "b")
    assert set(a) == {"gptq", "gptq-act-order-awq", "gguf", "gguf-awq"}
    differ = {k: ([h[:12] for h in a[k]], [h[:12] for h in b[k]]) for k in a if a[k] != b[k] or len(a[k]) != 1}
    assert not differ, differ
