import json
import shutil

import pytest
import torch

from conftest import run_cli
from edgellm.errors import EdgeLLMError
from edgellm.models import load, save


def test_load_tiny_llama_folder(tiny_llama):
    m = load(tiny_llama)
    assert m.meta.architecture == "LlamaForCausalLM"
    assert m.meta.task == "causal-lm"
    assert m.meta.n_params == sum(p.numel() for p in m.model.parameters())
    assert m.meta.file_bytes > m.meta.param_bytes * 0.9
    assert m.tokenizer is not None


def test_load_bert_encoder_and_classifier(tiny_bert):
    enc = load(tiny_bert)
    assert enc.meta.task == "encoder"
    cls = load(tiny_bert, task="classification", num_labels=2)
    assert cls.meta.task == "classification"
    assert cls.model.config.num_labels == 2


def test_save_roundtrip_is_exact(tiny_llama, tmp_path):
    m = load(tiny_llama)
    out = save(m, tmp_path / "copy")
    assert (out / "manifest.json").exists()
    m2 = load(out)
    ids = torch.arange(5, 25).view(1, -1)
    with torch.no_grad():
        assert torch.equal(m.model(ids).logits, m2.model(ids).logits)


def test_missing_path():
    with pytest.raises(EdgeLLMError, match="does not exist"):
        load("./no/such/model")


def test_unknown_builtin_suggests_closest():
    with pytest.raises(EdgeLLMError) as e:
        load("smollm2-135")
    assert "smollm2-135m" in str(e.value)


def test_folder_without_weights(tmp_path, tiny_llama):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(tiny_llama / "config.json", d)
    with pytest.raises(EdgeLLMError, match="no weights"):
        load(d)


def test_truncated_safetensors(tmp_path, tiny_llama):
    d = tmp_path / "trunc"
    shutil.copytree(tiny_llama, d)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgeLLMError, match="truncated"):
        load(d)


def test_pickle_refused_unless_allowed(tmp_path, tiny_llama):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(tiny_llama / "config.json", d)
    m = load(tiny_llama)
    torch.save(m.model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(EdgeLLMError, match="pickle"):
        load(d)
    with pytest.raises(EdgeLLMError, match="pickle"):
        load(d / "pytorch_model.bin")
    loaded = load(d, allow_pickle=True)
    assert loaded.meta.architecture == "LlamaForCausalLM"


@pytest.mark.parametrize("content", [b"not a gguf at all", b"GGUF\x03\x00\x00\x00\x01"])
def test_corrupt_gguf(tmp_path, content):
    f = tmp_path / "bad.gguf"
    f.write_bytes(content)
    with pytest.raises(EdgeLLMError, match="GGUF"):
        load(f)


def test_hub_id_offline_is_clear(monkeypatch):
    monkeypatch.delenv("EDGELLM_ONLINE", raising=False)
    with pytest.raises(EdgeLLMError, match="offline by default"):
        load("HuggingFaceTB/SmolLM2-135M")


def test_manifest_detects_tampering(tmp_path, tiny_llama):
    out = save(load(tiny_llama), tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    cfg["note"] = "edited"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgeLLMError, match="sha256"):
        load(out)


def test_cli_error_is_one_line_exit_2(tmp_path):
    code, out, err = run_cli("eval", tmp_path / "missing")
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_cli_debug_shows_traceback(tmp_path):
    with pytest.raises(EdgeLLMError):
        run_cli("--debug", "eval", tmp_path / "missing")


@pytest.mark.slow
def test_builtin_smollm2_loads():
    m = load("smollm2-135m")
    assert m.meta.architecture == "LlamaForCausalLM"
    assert 130e6 < m.meta.n_params < 140e6
    assert m.model.config.hidden_size == 576


@pytest.mark.slow
def test_builtin_minilm_loads_as_classifier():
    m = load("minilm-l6", task="classification", num_labels=2)
    assert m.model.config.num_hidden_layers == 6
    assert m.model.config.num_labels == 2


def test_gguf_without_model(tmp_path):
    import gguf

    f = tmp_path / "meta-only.gguf"
    w = gguf.GGUFWriter(str(f), arch="llama")
    w.add_string("general.name", "not a model")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(EdgeLLMError, match="without a model"):
        load(f)


@pytest.mark.parametrize("fmt", [None, "quantized", "sparse"])
def test_save_writes_every_folder_format_load_reads(tiny_llama, tmp_path, fmt):
    from edgellm.models import FOLDER_FORMATS, FOLDER_WRITERS, save
    from edgellm.pruning import PruneConfig, prune
    from edgellm.quantization import quantize

    assert set(FOLDER_WRITERS) == set(FOLDER_FORMATS)
    m = load(tiny_llama)
    if fmt == "quantized":
        quantize(m, bits=8, progress=False)
    elif fmt == "sparse":
        prune(m, PruneConfig(method="magnitude", sparsity=0.5), progress=False)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        want = m.model(ids).logits
    again = load(save(m, tmp_path / "m", format="sparse" if fmt == "sparse" else None))
    assert (again.meta.edgellm or {}).get("format") == fmt
    with torch.no_grad():
        assert torch.allclose(again.model(ids).logits, want, atol=1e-5)
