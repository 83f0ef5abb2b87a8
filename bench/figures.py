"""The measured figures quoted in hand-written prose (README.md, docs/*.md), each tied to the JSON it comes from.

``FIGURES`` lists every such quote: the page, the sentence with ``{}`` slots (Python format specs) and,
for each slot, where its value lies in ``bench/results/*.json`` (a table cell, a note, a top-level key).
``check()`` fills each sentence from the JSON and looks for it in the page (whitespace folded, so line
breaks do not matter): a page edited away from its JSON, or a JSON re-measured without its page, is
reported. Tables are not quoted here: a doc table is a generated block that ``bench.render`` fills from
the JSON (``<!-- generated: ... -->``; checked by re-rendering). ``python -m bench.figures`` prints the
problems and exits 1 when there are any.

Left out: numbers that are not measurements (flags, thresholds, targets, protocol sizes), and figures of
earlier code versions quoted as history (they have no current JSON; the page says which version).
"""

from __future__ import annotations

import json
import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from bench._common import RESULTS, ROOT


@dataclass(frozen=True)
class Cell:
    """The value of *column* in the first row of the table whose title starts with *table* where every
    ``match`` key has that value (``match`` is a tuple of ``(column, value)`` pairs)."""

    file: str
    table: str
    column: str
    match: tuple = ()

    def get(self, results: Path):
        r = json.loads((results / self.file).read_text())
        tables = [t for t in r["tables"] if t["title"].startswith(self.table)]
        if not tables:
            raise LookupError(f"{self.file}: no table titled '{self.table}...'")
        rows = [row for row in tables[0]["rows"] if all(row.get(k) == v for k, v in self.match)]
        if not rows or self.column not in rows[0]:
            raise LookupError(f"{self.file} '{self.table}': no row {dict(self.match)} with column '{self.column}'")
        return rows[0][self.column]


@dataclass(frozen=True)
class Note:
    """Group *group* of the first match of *pattern* in the notes of the table titled *table*...,
    or in the top-level key *key* when given."""

    file: str
    pattern: str
    group: int = 1
    table: str = ""
    key: str = ""

    def get(self, results: Path):
        r = json.loads((results / self.file).read_text())
        texts = [str(r.get(self.key, ""))] if self.key else \
            [n for t in r["tables"] if t["title"].startswith(self.table) for n in t.get("notes", [])]
        for text in texts:
            m = re.search(self.pattern, text)
            if m:
                return m.group(self.group)
        raise LookupError(f"{self.file}: no note of '{self.table}...' matches {self.pattern!r}")


def C(file, table, column, **match):     # noqa: N802 (a short constructor for the table below)
    return Cell(file, table, column, tuple(match.items()))


Q, QS, OX, RS, CM, OD = ("quantize.json", "quantize_speed.json", "classifier_onnx.json", "runtime_speed.json",
                         "costmodel.json", "optimize_demo.json")
QT, QSPEED = "Quality against the issue's targets", "Decode speed, PyTorch eager"
OXT, GEMM = "accuracy and throughput", "the int8 ceiling"
RST = "speed by runtime and bit width"
LOO, HELD = "leave-one-out decode predictions", "held-out models"
LT, LTN = "litert.json", "SmolLM2-135M int8: the file against its modelled reference"
LTS, LTP = "SmolLM2-135M speed, paired rounds", "SmolLM2-135M perplexity on the LiteRT interpreter"


def _q(setting):
    return C(Q, QT, "Δppl", setting=setting)


def _rs(runtime, bits, column="decode tok/s"):
    return C(RS, RST, column, runtime=runtime, bits=bits)


def _ox(runtime, column):
    return C(OX, OXT, column, runtime=runtime)


def _hg(qtype, quantizer):
    return [C("head_gptq.json", "Head type and quantizer", f"{text} rise", type=qtype, quantizer=quantizer)
            for text in ("wiki.valid held-out", "SST-2 train")]


def _phase(run, phase):
    return C(QS, f"Profile: {run} ", "seconds", phase=phase)


# (page, sentence with {} slots, one locator per slot)
FIGURES: list[tuple[str, str, list]] = [
    # README.md: the demo run (its table is a generated block)
    ("README.md", "wall time {} min;", [Note(OD, r"search wall time ([\d.]+) min", table="Candidates")]),
    ("README.md", "is {}× smaller and {}× faster at decoding than fp32 PyTorch, at {} perplexity",
     [Note(OD, r"([\d.]+)x smaller", table="Candidates"), Note(OD, r"([\d.]+)x faster", table="Candidates"),
      C(OD, "Candidates", "quality loss", pick="CHOSEN")]),
    ("README.md", "predicted the calibrated llama.cpp row within {}",
     [C(OD, "Cost model", "error (before)", candidate="smollm2-135m · fp32 · llama.cpp")]),
    ("README.md", "(leave-one-out: {} for the pick)",
     [C(OD, "Cost model", "error (leave-one-out)", candidate="smollm2-135m · w8-rtn-g32 · llama.cpp")]),
    ("README.md", "the pick is {}× its size, its\nperplexity rise is {}× Q4_K_M's ({} against {}), and it decodes {}× as fast "
     "(paired, {} rounds)", [Note(OD, r"pick vs [^:]*Q4_K_M[^:]*: size ([\d.]+)x", table="Candidates"),
                             Note(OD, r"pick vs [^:]*Q4_K_M[^:]*: .*\(([\d.]+)x\), decode", table="Candidates"),
                             Note(OD, r"pick vs [^:]*Q4_K_M[^:]*: .*rise ([-+\d.]+%) vs", table="Candidates"),
                             Note(OD, r"pick vs [^:]*Q4_K_M[^:]*: .* vs ([-+\d.]+%) \(", table="Candidates"),
                             Note(OD, r"pick vs [^:]*Q4_K_M[^:]*: .*decode speed ([\d.]+)x", table="Candidates"),
                             Note(OD, r"pick vs [^:]*Q4_K_M[^:]*: .*paired, (\d+) rounds", table="Candidates")]),
    ("README.md", "that run took {} min", [Note("optimize_demo_ladder.json", r"search wall time ([\d.]+) min",
                                                  table="Candidates")]),
    ("README.md", "about {:.0f} s for SmolLM2 on 2 cores", [C(QS, "Best W4 recipe", "quantize s", run="after")]),
    # docs/gguf.md: the output head alone by RTN, importance-weighted RTN and GPTQ (bench/head_gptq.py)
    ("docs/gguf.md", "A Q5_0 tied embedding/head raises them by {} / {} with RTN, {} / {} with RTN weighted by `diag(H)`, "
     "and {} / {} with GPTQ. For IQ4_NL the figures are {} / {}, {} / {} and {} / {}.",
     _hg("q5_0", "rtn") + _hg("q5_0", "rtn-imp") + _hg("q5_0", "gptq") + _hg("iq4_nl", "rtn") + _hg("iq4_nl", "rtn-imp")
     + _hg("iq4_nl", "gptq")),
    # docs/onnx-executorch.md
    ("docs/onnx-executorch.md", "int8 vs PyTorch fp32: {:.2f}x at batch 1 (unfused int8: {:.2f}x) and {:.2f}x at "
     "batch 32 (unfused: {:.2f}x);",
     [_ox("onnx int8", "batch 1 × torch"), _ox("onnx int8, unfused", "batch 1 × torch"),
      _ox("onnx int8", "batch 32 × torch"), _ox("onnx int8, unfused", "batch 32 × torch")]),
    ("docs/onnx-executorch.md", "file {:.1f} MB (unfused {:.1f} MB",
     [_ox("onnx int8", "size MB"), _ox("onnx int8, unfused", "size MB")]),
    ("docs/onnx-executorch.md", "accuracy {:.2f}% (unfused {:.2f}%, PyTorch {:.2f}%)",
     [_ox("onnx int8", "SST-2 dev accuracy"), _ox("onnx int8, unfused", "SST-2 dev accuracy"),
      _ox("torch fp32", "SST-2 dev accuracy")]),
    ("docs/onnx-executorch.md", "at {:.2f}x its fp32 MatMul ({:.0f} vs {:.0f} GOP/s), and onnxruntime fp32 is {:.2f}x "
     "PyTorch fp32 end to end. So int8 can reach about {:.2f} × {:.2f}",
     [C(OX, GEMM, "× fp32", kernel="dynamic int8 MatMulInteger"), C(OX, GEMM, "GOP/s", kernel="dynamic int8 MatMulInteger"),
      C(OX, GEMM, "GOP/s", kernel="fp32 MatMul"), _ox("onnx fp32", "batch 32 × torch"),
      _ox("onnx fp32", "batch 32 × torch"), C(OX, GEMM, "× fp32", kernel="dynamic int8 MatMulInteger")]),
    ("docs/onnx-executorch.md", "before counting any other op, and {:.2f}x is what it measures",
     [_ox("onnx int8", "batch 32 × torch")]),
    ("docs/onnx-executorch.md", "fp32 {:.1f}, 8da8w {:.1f}, 8da4w {:.1f} tok/s decode. That is slower than ONNX Runtime "
     "({:.1f} / {:.1f} / {:.1f}) and llama.cpp ({:.1f} / {:.1f} / {:.1f}) here.",
     [_rs("executorch", b) for b in ("fp32", "8-bit", "4-bit")] + [_rs("onnxruntime", b) for b in ("fp32", "8-bit", "4-bit")]
     + [_rs("llama.cpp", b) for b in ("fp32", "8-bit", "4-bit")]),
    ("docs/onnx-executorch.md", "The fp32 .pte decodes at {:.1f}% of its bandwidth bound, the quantized ones at {:.1f}% "
     "and {:.1f}%.", [_rs("executorch", b, "BW util") for b in ("fp32", "8-bit", "4-bit")]),
    # docs/optimize.md
    ("docs/optimize.md", "predicts the students' {} rows: all {} are within 25% (worst {:+.1f}%, depth25 Q4_0)",
     [Note(CM, r"on (\d+) held-out rows", table=HELD), Note(CM, r"on (\d+) held-out rows", table=HELD),
      C(CM, HELD, "error", model="depth25", runtime="llama.cpp", kind="q4_0")]),
    ("docs/optimize.md", "): {} of {} are within 25%. The worst is the fp32 row of llama.cpp ({:+.1f}%)",
     [Note(CM, r"over (\d+) rows", table=LOO), Note(CM, r"over (\d+) rows", table=LOO),
      C(CM, LOO, "error", runtime="llama.cpp", bits="fp32")]),
    ("docs/optimize.md", "measured {:.2f}×", [C(CM, HELD, "× SmolLM2 measured", model="depth25", runtime="torch")]),
    ("docs/optimize.md", "per layer it predicts {:.2f}× ({:+.1f}%)",
     [C(CM, HELD, "× predicted", model="depth25", runtime="torch"), C(CM, HELD, "error", model="depth25", runtime="torch")]),
    # docs/quantization.md: the results table (a pivot of quantize.json's rows) and the decode speeds
    ("docs/quantization.md", "| W8 per-channel | {:+.2f}% |", [_q("W8 per-channel RTN")]),
    ("docs/quantization.md", "| W4 g32 symmetric (Q4_0 grid) | {:+.1f}% | {:+.1f}% | {:+.1f}% | **{:+.1f}%** |",
     [_q("W4 g32 sym RTN (Q4_0 grid)"), _q("W4 g32 sym GPTQ"), _q("W4 g32 sym AWQ"), _q("W4 g32 sym GPTQ+AWQ prescale")]),
    ("docs/quantization.md", "| W4 g64 asymmetric | {:+.1f}% | {:+.1f}% | | **{:+.1f}%** |",
     [_q("W4 g64 asym RTN"), _q("W4 g64 asym GPTQ"), _q("W4 g64 asym GPTQ+AWQ prescale")]),
    ("docs/quantization.md", "| W3 g32 asymmetric | {:+.1f}% | {:+.1f}% | | **{:+.1f}%** |",
     [_q("W3 g32 asym RTN"), _q("W3 g32 asym GPTQ"), _q("W3 g32 asym GPTQ+AWQ prescale")]),
    ("docs/quantization.md", "base perplexity {:.2f};", [C(Q, QT, "perplexity", setting="fp32 (reference)")]),
    ("docs/quantization.md", "fp32 {:.1f} tok/s, W8 {:.1f} ({:.3f}×), W4 {:.1f} ({:.3f}×), W8A8 {:.1f} ({:.3f}×)",
     [C(Q, QSPEED, "decode tok/s (median)", model="fp32")]
     + [C(Q, QSPEED, c, model=m) for m in ("W8", "W4 g32 sym", "W8A8")
        for c in ("decode tok/s (median)", "÷ fp32 (median of per-round ratios)")]),
    # docs/quantization.md: the speed section (quantize_speed.json)
    ("docs/quantization.md", "cProfile, {:.1f} s; {:.1f} s without it)",
     [C(QS, "Best W4 recipe", "quantize s", run="before"), C(QS, "Best W4 recipe", "quantize s", run="before-plain")]),
    *[("docs/quantization.md", f"| {label} | {{:.1f}} | {{:.1f}} |", [_phase("before", before), _phase("after", after)])
      for label, before, after in (
          ("block forwards: statistics pass",) * 3,
          ("block forwards: outputs pass",) * 3,
          ("Hessian accumulation",) * 3,
          ("AWQ input sample / mean \\|x\\|", "AWQ input sample", "AWQ input sample / mean |x|"),
          ("AWQ scale search",) * 3,
          ("MSE clip search",) * 3,
          ("GPTQ column loop",) * 3,
          ("GPTQ setup (Cholesky, permutation)", "GPTQ setup (Cholesky, permute, pack record)",
           "GPTQ setup (Cholesky, permute, pack record)"))],
    ("docs/quantization.md", "| **quantize() total** | **{:.1f}** | **{:.1f}** |",
     [_phase("before", "quantize() total"), _phase("after", "quantize() total")]),
    ("docs/quantization.md", "fp32 {:.3f}): {:.2f} ({:+.2f}%) before, {:.2f} ({:+.2f}%) after",
     [Note(QS, r"fp32 perplexity on the same protocol: ([\d.]+)", table="Best W4 recipe"),
      C(QS, "Best W4 recipe", "perplexity", run="before"), C(QS, "Best W4 recipe", "rise", run="before"),
      C(QS, "Best W4 recipe", "perplexity", run="after"), C(QS, "Best W4 recipe", "rise", run="after")]),
    # docs/pruning.md
    ("docs/pruning.md", "The default measures {:.2f} today", [C("prune.json", "Unstructured and 2:4", "perplexity",
                                                       method="sparsegpt", pattern="unstructured")]),
    ("docs/pruning.md", "today ({:+.1f}%;", [C("prune.json", "Unstructured and 2:4", "Δ ppl",
                                               method="sparsegpt", pattern="unstructured")]),
    # docs/litert.md: the int8 verification (its noise table is a generated block)
    ("docs/litert.md", "KL {:.4f} (limit 0.02) and top-1 {:.3f} (limit 0.90)",
     [C(LT, LTN, "KL", compared="int8 file, head input fp32 (default): interpreter"),
      C(LT, LTN, "top-1", compared="int8 file, head input fp32 (default): interpreter")]),
    ("docs/litert.md", "fails on KL {:.4f} and top-1 {:.3f}",
     [C(LT, LTN, "KL", compared="int8 file, head input int8: interpreter"),
      C(LT, LTN, "top-1", compared="int8 file, head input int8: interpreter")]),
    ("docs/litert.md", "ExecuTorch decodes at {:.2f}× (fp32) and {:.2f}× (int8),\nand llama.cpp at {:.2f}× and {:.2f}×",
     [C(LT, LTS, "decode × litert", runtime="executorch fp32"), C(LT, LTS, "decode × litert", runtime="executorch int8"),
      C(LT, LTS, "decode × litert", runtime="llama.cpp F32"), C(LT, LTS, "decode × litert", runtime="llama.cpp Q8_0")]),
    ("docs/litert.md", "rounds the head's input decodes {:.2f}× as fast",
     [C(LT, LTS, "decode × litert", runtime="litert int8, head input int8")]),
    ("docs/litert.md", "rises 1.49% on the\nstandard protocol ({:.3f} against {:.3f}), and 1.97% when the head's input is "
     "rounded too ({:.3f})", [C(LT, LTP, "perplexity", runtime="litert int8"), C(LT, LTP, "perplexity", runtime="torch fp32"),
                              C(LT, LTP, "perplexity", runtime="litert int8, head input int8")]),
]

_NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?")


def _value(raw, spec: str):
    """*raw* as the slot's format wants it: a string cell ('+8.06%', '16.7') becomes its number when the slot
    has a numeric spec; a string slot ('{}') keeps the text."""
    if not spec or not isinstance(raw, str):
        return raw
    m = _NUMBER.search(raw)
    if not m:
        raise ValueError(f"no number in {raw!r} for format '{spec}'")
    return float(m.group().replace("−", "-"))


def fill(template: str, locators: list, results: Path = RESULTS) -> str:
    """*template* with each slot filled from its locator's JSON value.

    >>> fill("took {} min", [Note("optimize_demo_ladder.json", r"wall time ([\\d.]+) min", table="Candidates")])  # doctest: +SKIP
    'took 13.8 min'
    """
    specs = [spec for _, field, spec, _ in string.Formatter().parse(template) if field is not None]
    if len(specs) != len(locators):
        raise ValueError(f"{template!r}: {len(specs)} slots, {len(locators)} locators")
    return template.format(*[_value(loc.get(results), spec) for loc, spec in zip(locators, specs)])


def _fold(text: str) -> str:
    return " ".join(text.replace("−", "-").split())      # a typographic minus reads as "-"


def check(root: Path = ROOT, results: Path = RESULTS, figures: list | None = None) -> list[str]:
    """Every quoted figure that its page does not state as its JSON says; ``[]`` when all agree.

    >>> check()   # doctest: +SKIP
    []
    """
    problems, pages = [], {}
    for page, template, locators in FIGURES if figures is None else figures:
        try:
            want = fill(template, locators, results)
        except (LookupError, ValueError, OSError) as e:
            problems.append(f"{page}: {template!r}: {e}")
            continue
        if page not in pages:
            pages[page] = _fold((root / page).read_text())
        if _fold(want) not in pages[page]:
            problems.append(f"{page}: expected the JSON's figure: {want!r}")
    return problems


if __name__ == "__main__":
    found = check()
    print("\n".join(found) or f"{len(FIGURES)} quoted figures agree with bench/results/")
    sys.exit(1 if found else 0)
