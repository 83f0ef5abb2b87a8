"""Every measured figure in README.md and docs/*.md equals the bench/results/*.json it comes from.

Three kinds of page text are checked: docs/benchmarks.md is generated whole (``bench.render``: re-rendered
into a temporary file and compared); a table quoted on a hand-written page is a generated block
(``<!-- generated: FILE.json | TABLE | COLUMNS -->``, re-rendered and compared); a figure quoted in prose
is listed in ``bench.figures.FIGURES`` with its JSON location and filled in from it. Each check is shown
to fail on a copy whose page, or whose JSON, was changed by one figure. Pages show no machine paths.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench import figures
from bench._common import RESULTS, ROOT
from bench.render import BLOCK, pages, render, render_blocks

MACHINE_PATH = re.compile(r"(?<![\w.<$~-])(?:/root/|/home/\w|/Users/\w|/work/|[\w./-]*site-packages/|[\w./-]*\.venv/lib/)")


@pytest.fixture
def tree(tmp_path):
    """A copy of the pages and the results, to change one figure in."""
    (tmp_path / "docs").mkdir()
    for page in pages():
        shutil.copy(page, tmp_path / page.relative_to(ROOT))
    shutil.copytree(RESULTS, tmp_path / "results")
    return tmp_path


def test_quoted_figures_equal_their_json():
    assert figures.check() == []


def test_every_quoted_figure_has_slots_and_a_page():
    for page, template, locators in figures.FIGURES:
        assert (ROOT / page).is_file(), page
        assert locators and "{" in template, template
        for loc in locators:
            assert (RESULTS / loc.file).is_file(), loc.file


def test_generated_blocks_equal_their_json():
    blocks = 0
    for page in pages():
        text = page.read_text()
        blocks += len(BLOCK.findall(text))
        assert render_blocks(text) == text, f"{page.relative_to(ROOT)}: run python -m bench.render"
    assert blocks >= 1
    assert BLOCK.search((ROOT / "README.md").read_text()), "the README's demo table is generated"


def test_benchmarks_page_is_generated_from_the_results(tmp_path):
    out = render(RESULTS, tmp_path / "benchmarks.md")
    assert out.read_text() == (ROOT / "docs" / "benchmarks.md").read_text(), "run python -m bench.render"


def test_a_page_figure_that_drifts_from_its_json_fails(tree):
    page = tree / "docs" / "onnx-executorch.md"
    text = page.read_text()
    rows = json.loads((tree / "results" / "runtime_speed.json").read_text())["tables"][0]["rows"]
    now = f"fp32 {next(r['decode tok/s'] for r in rows if r['runtime'] == 'executorch' and r['bits'] == 'fp32'):.1f},"
    assert now in text
    page.write_text(text.replace(now, "fp32 9.8,"))                     # a stale figure, as issue 20 found one
    problems = figures.check(tree, tree / "results")
    assert len(problems) == 1 and problems[0].startswith("docs/onnx-executorch.md") and now[5:-1] in problems[0]


def test_a_json_remeasured_without_its_page_fails(tree):
    path = tree / "results" / "classifier_onnx.json"
    r = json.loads(path.read_text())
    ceiling = next(t for t in r["tables"] if t["title"].startswith("the int8 ceiling"))
    row = next(row for row in ceiling["rows"] if row["kernel"] == "dynamic int8 MatMulInteger")
    row["× fp32"] = 1.62                                                 # the older run the page used to quote
    path.write_text(json.dumps(r))
    problems = figures.check(tree, tree / "results")
    assert problems and all("onnx-executorch.md" in p and "1.62x" in p for p in problems)


def test_a_generated_table_edited_by_hand_fails(tree):
    page = tree / "README.md"
    text = page.read_text()
    block = BLOCK.search(text).group(0)                          # a figure of the generated demo table
    cell = re.search(r"\| (\d+\.\d) \|", block).group(0)
    edited = text.replace(block, block.replace(cell, "| 99999.9 |", 1), 1)
    assert edited != text
    assert render_blocks(edited, tree / "results") != edited
    assert render_blocks(edited, tree / "results") == text


def test_a_block_naming_a_missing_table_or_column_fails():
    with pytest.raises(ValueError, match="no table"):
        render_blocks("<!-- generated: optimize_demo.json | No such table | a -->\n<!-- end generated -->")
    with pytest.raises(ValueError, match="no column"):
        render_blocks("<!-- generated: optimize_demo.json | Candidates | no such column -->\n<!-- end generated -->")


def test_a_figure_whose_json_location_is_gone_is_reported():
    bad = [("README.md", "wall time {} min", [figures.Cell("optimize_demo.json", "Candidates", "no such column")])]
    (problem,) = figures.check(figures=bad)
    assert "no such column" in problem


@pytest.mark.parametrize("page", [*pages(), ROOT / "docs" / "benchmarks.md"], ids=lambda p: p.name)
def test_pages_show_no_machine_paths(page):
    hits = MACHINE_PATH.findall(page.read_text())
    assert not hits, f"{page.name}: machine paths {hits[:5]}: show them repository-relative (bench._common.repo_relative)"
