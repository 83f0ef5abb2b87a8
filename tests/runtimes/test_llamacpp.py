"""llama.cpp runtime on tiny GGUF exports: logits, KV-cache decoding, sampling, grammar, tokenizer, errors."""

from __future__ import annotations

import sys

import pytest
import torch

import llama_cpp  # noqa: F401

from conftest import run_cli  # noqa: E402
from edgellm.errors import EdgeLLMError  # noqa: E402
from edgellm.exporters.gguf import export_gguf  # noqa: E402
from edgellm.models import load  # noqa: E402
from edgellm.runtimes import open_runtime, pick_runtime  # noqa: E402
from edgellm.runtimes.llamacpp import LlamaCppRuntime  # noqa: E402
from edgellm.runtimes.torch import TorchRuntime  # noqa: E402

CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}")


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return load(tiny_llama)


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory):
    tiny.tokenizer.chat_template = CHAT
    try:
        return export_gguf(tiny, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", gguf_type="f32")
    finally:
        tiny.tokenizer.chat_template = None


@pytest.fixture(scope="module")
def rt(tiny_gguf):
    return open_runtime(tiny_gguf, threads=2)


def test_gguf_picks_llamacpp_and_reports_sizes(rt, tiny_gguf):
    assert pick_runtime(str(tiny_gguf)) == "llama.cpp"
    assert rt.name == "llama.cpp" and rt.threads == 2
    assert rt.max_positions == 256 and rt.vocab_size == 320
    assert rt.file_bytes() == tiny_gguf.stat().st_size
    # tied embedding: every tensor is read per token; all of it is under the file size (header excluded)
    assert 0.9 * rt.file_bytes() < rt.weight_bytes() < rt.file_bytes()


def test_logits_match_pytorch_f32(rt, tiny):
    ids = torch.tensor(tiny.tokenizer("the light turn on music in the kitchen", add_special_tokens=False)["input_ids"])
    got = rt.logits(ids)
    want = TorchRuntime(tiny, device="cpu").logits(ids)
    assert got.dtype == torch.float32 and got.shape == want.shape == (len(ids), 320)
    assert (got - want).abs().max().item() < 1e-3 * want.abs().max().item()
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_greedy_decode_with_cache_equals_full_window_argmax(rt, tiny):
    ids = tiny.tokenizer("play a song in the garden", add_special_tokens=False)["input_ids"]
    gen = list(rt.generate(torch.tensor(ids), 12))
    assert len(gen) == 12                                   # EOS ignored without stop_ids
    full = rt.logits(torch.tensor(ids + gen))
    assert full[len(ids) - 1 : -1].argmax(-1).tolist() == gen


def test_stop_ids_seeded_sampling_and_processor(rt):
    ids = torch.tensor([5, 6, 7, 8])
    first = next(iter(rt.generate(ids, 8)))
    assert list(rt.generate(ids, 8, stop_ids=(first,))) == [first]
    a = list(rt.generate(ids, 10, temperature=1.0, top_p=0.9, seed=7))
    assert a == list(rt.generate(ids, 10, temperature=1.0, top_p=0.9, seed=7))
    banned = set(range(100, 320))
    def only_low(generated, row):
        row[list(banned)] = float("-inf")
        return row
    assert all(t < 100 for t in rt.generate(ids, 6, temperature=1.0, seed=1, logits_processor=only_low))


def test_grammar_constrains_output(rt):
    tok = rt.tokenizer
    ids = torch.tensor(tok("the robot says", add_special_tokens=False)["input_ids"])
    for seed in (0, 1):
        out = list(rt.generate(ids, 12, temperature=1.0, seed=seed, stop_ids=(tok.eos_token_id,),
                               grammar='root ::= ("light" | "music") " " ("on" | "off")'))
        text = tok.decode(out, skip_special_tokens=True)
        assert text in {"light on", "light off", "music on", "music off"}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    out = list(rt.generate(ids, 24, stop_ids=(tok.eos_token_id,), grammar=schema))
    text = tok.decode(out, skip_special_tokens=True)
    import json
    assert isinstance(json.loads(text)["n"], int)
    with pytest.raises(EdgeLLMError, match="grammar"):
        list(rt.generate(ids, 4, grammar="root ::= ("))


def test_tokenizer_matches_source_and_chat_template(rt, tiny):
    tok, hf = rt.tokenizer, tiny.tokenizer
    text = "Turn on the warm heater, then open the window. Two red doors!"
    assert tok(text, add_special_tokens=False)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.eos_token_id == hf.eos_token_id and tok.bos_token_id == hf.bos_token_id
    msgs = [{"role": "user", "content": "turn on the light"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == "<s>user: turn on the light</s>\n<s>assistant:"
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids


def test_context_limits_are_checked(rt):
    with pytest.raises(EdgeLLMError, match="exceed"):
        rt.logits(torch.zeros(300, dtype=torch.long))
    with pytest.raises(EdgeLLMError, match="exceed"):
        list(rt.generate(torch.zeros(200, dtype=torch.long), 100))
    with pytest.raises(EdgeLLMError, match="out of range"):
        rt.logits(torch.tensor([1, 999]))


def test_bad_inputs(tiny_gguf, tiny_llama, tmp_path, monkeypatch):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 3])
    with pytest.raises(EdgeLLMError, match="corrupt|truncated"):
        LlamaCppRuntime.open(broken)
    code, _, err = run_cli("eval", broken, "--runtime", "llama.cpp", "--max-tokens", "64")
    assert code == 2 and "corrupt" in err or "truncated" in err
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(EdgeLLMError, match="not a GGUF"):
        LlamaCppRuntime.open(not_gguf)
    with pytest.raises(EdgeLLMError, match="runs .gguf files"):
        open_runtime(tiny_llama, runtime="llama.cpp")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(EdgeLLMError, match=r"edgellm\[llamacpp\]"):
        LlamaCppRuntime.open(tiny_gguf)


def test_eval_cli_on_gguf(tiny_gguf, text_file):
    code, out, err = run_cli("eval", tiny_gguf, "--ppl", text_file, "--ctx", "128", "--max-tokens", "512",
                             "--threads", "2")
    assert code == 0, err
    assert "llama.cpp" in out
