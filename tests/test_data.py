import pytest
import torch

from edgellm.data import calibration_windows, data_dir, read_text, read_tsv, tokenize_file
from edgellm.errors import EdgeLLMError
from edgellm.models import load


def test_empty_text(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("  \n")
    with pytest.raises(EdgeLLMError, match="empty"):
        read_text(f)


def test_non_utf8_text(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(EdgeLLMError, match="not UTF-8"):
        read_text(f)


def test_missing_text(tmp_path):
    with pytest.raises(EdgeLLMError, match="not found"):
        read_text(tmp_path / "nope.txt")


def test_tsv_skips_header(tsv_file):
    rows = read_tsv(tsv_file)
    assert len(rows) == 64 and {r.label for r in rows} == {0, 1}


def test_calibration_windows_seeded(tiny_llama, text_file):
    tok = load(tiny_llama).tokenizer
    a = calibration_windows(tok, text_file, 4, 32, seed=1)
    b = calibration_windows(tok, text_file, 4, 32, seed=1)
    c = calibration_windows(tok, text_file, 4, 32, seed=2)
    assert a.shape == (4, 32) and torch.equal(a, b) and not torch.equal(a, c)
    ids = tokenize_file(tok, text_file)
    joined = ids.tolist()
    for row in a.tolist():  # every window is a real slice of the file
        assert any(joined[i : i + 32] == row for i in range(0, len(joined) - 31, 32))


def test_calibration_too_short(tiny_llama, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("turn on the light")
    with pytest.raises(EdgeLLMError, match="fewer than one window"):
        calibration_windows(load(tiny_llama).tokenizer, f, 4, 512)


def test_calibration_fewer_windows_warns(tiny_llama, text_file):
    tok = load(tiny_llama).tokenizer
    n = tokenize_file(tok, text_file).numel()
    with pytest.warns(UserWarning, match="using"):
        x = calibration_windows(tok, text_file, 10_000, 64)
    assert x.shape == (n // 64, 64)


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGELLM_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.setenv("EDGELLM_DATA", str(tmp_path / "missing"))
    with pytest.raises(EdgeLLMError, match="EDGELLM_DATA"):
        data_dir()
