"""report.table: human units and aligned terminal tables."""

from __future__ import annotations

import pytest

from edgellm.report.table import fmt, format_table, human_bytes, key_values


@pytest.mark.parametrize("n, text", [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                     (5 * 2**20, "5.0 MiB"), (258.3 * 2**20, "258.3 MiB"), (3 * 2**30, "3.0 GiB"),
                                     (2**50, "1024.0 TiB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_fmt():
    assert fmt(None) == "-"
    assert fmt(1.23456) == "1.23" and fmt(1.23456, 3) == "1.235"
    assert fmt(12345678.9) == "1.23e+07"
    assert fmt(7) == "7" and fmt("x") == "x"


def test_format_table_aligns_columns_and_keeps_their_order():
    rows = [{"name": "fp32", "tok/s": 8.512, "size": "516.5 MiB"}, {"name": "w8-rtn-g32", "tok/s": None, "size": "1 B"}]
    lines = format_table(rows, title="speed").splitlines()
    assert lines[0] == "speed"
    assert lines[1] == "name        tok/s  size"
    assert lines[2] == "----------  -----  ---------"
    assert lines[3] == "fp32        8.51   516.5 MiB"
    assert lines[4] == "w8-rtn-g32  -      1 B"
    assert all(line == line.rstrip() for line in lines)


def test_format_table_column_subset_and_empty():
    assert format_table([{"a": 1, "b": 2}], columns=["b"]).splitlines() == ["b", "-", "2"]
    assert format_table([{"a": 1}], columns=["a", "missing"]).splitlines()[2] == "1  -"
    assert format_table([], title="nothing") == "nothing"
    assert format_table([]) == ""


def test_key_values():
    assert key_values({"cores": 2, "bandwidth GB/s": 9.876}, title="host") == "host\ncores           2\nbandwidth GB/s  9.88"
