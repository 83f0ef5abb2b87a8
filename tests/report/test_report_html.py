"""report.html: the optimize report page and the summary rows shared with the terminal."""

from __future__ import annotations

import re

from edgellm.report.html import summary_rows, write_report


def row(recipe, runtime="llama.cpp", status="measured", **kw):
    r = {"model": "models/smollm2-135m", "recipe": recipe, "runtime": runtime, "status": status,
         "label": f"smollm2-135m · {recipe} · {runtime}", "quality_loss": 0.01, "quality": {"perplexity": 28.9},
         "size_bytes": 138 * 2**20, "peak_ram_bytes": 466 * 2**20, "decode_tok_s": 57.5, "ttft_ms": 20.0,
         "measured": True, "host_check": {"ram_measured": True}}
    r.update(kw)
    return r


def result(**kw):
    r = {"config": {"task": "text-generation", "models": ["smollm2-135m"]},
         "device": {"name": "host", "description": "this machine", "source": "measured <here>"},
         "figures": "measured on this host", "objective": "speed", "elapsed_s": 90.0,
         "constraints": {"max_quality_loss": 0.1, "min_speed": 5, "max_ram_bytes": 2**30},
         "rows": [row("fp32", runtime="torch", quality_loss=0.0, pareto=True),
                  row("w8-rtn-g32", chosen=True, pareto=True),
                  row("w4<script>", status="rejected", measured=False, quality={"perplexity": 32.3, "protocol": "screen"},
                      quality_loss=0.2054, reason="quality loss over budget"),
                  row("depth50", status="dropped", reason="does not fit")],
         "chosen": {"label": "smollm2-135m · w8-rtn-g32 · llama.cpp", "quality_loss": 0.0059},
         "vs_base": {"size_ratio": 3.74, "speed_ratio": 6.73, "base": "fp32 torch"},
         "export": {"path": "out/model/model.gguf", "runtime": "llama.cpp", "verification": {"passed": True}},
         "plots": ["pareto.png", "pareto.svg"],
         "calibration": {"llama.cpp": {"source": "measured", "n": 2, "decode": 0.61, "prefill": 0.3,
                                       "overhead_bytes": 2**20}},
         "notes": ["a note & more"]}
    r.update(kw)
    return r


def test_summary_rows_marks_pick_provenance_and_screen():
    rows = summary_rows(result())
    assert [r["candidate"] for r in rows] == ["smollm2-135m · fp32", "smollm2-135m · w8-rtn-g32",
                                              "smollm2-135m · w4<script>"]              # dropped rows left out
    assert [r["pick"] for r in rows] == ["pareto", "CHOSEN", ""]
    assert [r["figures"] for r in rows] == ["measured", "measured", "predicted"]
    assert rows[1]["quality loss"] == "+1.00%" and rows[2]["quality loss"] == "+20.54% (screen)"
    assert rows[1]["size"] == "138.0 MiB" and rows[1]["decode tok/s"] == "57.5" and rows[1]["ppl"] == "28.90"
    assert len(summary_rows(result(), all_rows=True)) == 4


def test_summary_rows_flags_a_predicted_ram_and_classifiers():
    r = result(rows=[row("fp32", host_check={})])
    assert summary_rows(r)[0]["figures"] == "measured; RAM predicted"
    cls = result(config={"task": "classification"},
                 rows=[row("int8", runtime="onnxruntime", quality={"accuracy": 0.9108}, examples_per_s=812.0)])
    (only,) = summary_rows(cls)
    assert only["accuracy"] == "91.08" and only["examples/s"] == "812.0"
    assert "ppl" not in only and "decode tok/s" not in only


def test_write_report_page(tmp_path):
    path = write_report(result(), tmp_path / "report.html")
    page = path.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]                    # written atomically
    assert "<h2>Chosen: smollm2-135m · w8-rtn-g32 · llama.cpp</h2>" in page
    assert "3.74× smaller and 6.73× faster than fp32 torch" in page and "+0.59%" in page
    assert "verified on llama.cpp: passed" in page
    chosen = re.findall(r'<tr class="chosen">(.*?)</tr>', page)
    assert len(chosen) == 1 and "w8-rtn-g32" in chosen[0]
    assert len(re.findall(r'<tr class="pareto">', page)) == 1
    assert "<script>" not in page and "w4&lt;script&gt;" in page                      # names are escaped
    assert "measured &lt;here&gt;" in page and "a note &amp; more" in page
    assert '<span class="pred">predicted</span>' in page
    assert "<img id='pareto' src='pareto.svg'" in page and "href='pareto.png'" in page
    assert "quality loss ≤ 10.0%" in page and "peak RAM ≤ 1.0 GiB" in page
    dropped = page.split("<h2>Dropped, rejected and skipped</h2>")[1]
    assert "does not fit" in dropped and "quality loss over budget" in dropped
    candidates = page.split("<h2>Candidates</h2>")[1].split("</table>")[0]
    assert "depth50" not in candidates
    assert not re.search(r"(src|href)=['\"]https?:", page)                           # opens offline


def test_write_report_without_a_pick_names_the_binding_constraint(tmp_path):
    r = result(chosen=None, export=None,
               infeasible={"binding": "max_quality_loss",
                           "closest": [{"label": "smollm2-135m · w4 · llama.cpp", "shortfalls": {"quality": 0.054}}]})
    page = write_report(r, tmp_path / "report.html").read_text()
    assert "No candidate meets the constraints" in page and "<b>max_quality_loss</b>" in page
    assert "quality by 5.4%" in page and "Chosen:" not in page
