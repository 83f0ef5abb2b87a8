"""bench/head_gptq.py on a tiny tied Llama with the protocol shrunk: one row per (type, quantizer), with both
held-out texts, and a result file with the bench envelope."""

from __future__ import annotations

import json

from bench.head_gptq import main
from conftest import make_tiny_llama


def test_head_gptq_dry_run(tmp_path):
    model = make_tiny_llama(tmp_path / "llama", hidden_size=64)
    out = tmp_path / "head.json"
    main(["--model", str(model), "--types", "q8_0,q4_0", "--calib-samples", "2", "--windows", "2", "--len", "64",
          "--out", str(out)])
    r = json.loads(out.read_text())
    rows = r["tables"][0]["rows"]
    assert [(x["type"], x["quantizer"]) for x in rows] == [(t, q) for t in ("q8_0", "q4_0") for q in ("rtn", "rtn-imp", "gptq")]
    assert r["format"] == "edgellm-bench/2" and r["argv"] and set(r["base_ppl"]) == {"wiki.valid held-out", "SST-2 train"}
    for x in rows:
        assert x["measured_at"] and x["wiki.valid held-out ppl"] > 1 and x["SST-2 train ppl"] > 1
    q8 = [float(x["wiki.valid held-out rise"].rstrip("%")) for x in rows if x["type"] == "q8_0"]
    assert max(abs(v) for v in q8) < 1.0          # Q8_0 of the head is near-lossless whichever way it is rounded
