"""Shared fixtures: tiny random Llama and BERT models built from configs, with real tokenizers
trained on a small synthetic corpus, so tests run in seconds and need no download."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

# `make test` installs every extra, so a missing optional dependency is a failure, never a skip: the run stops
# here naming the extra, instead of tests importing it failing one by one (or, as before, skipping silently)
EXTRAS = {"llamacpp": ("llama_cpp",), "onnx": ("onnx", "onnxruntime", "onnxscript"), "executorch": ("executorch", "torchao"),
          "serve": ("fastapi", "uvicorn", "jsonschema", "outlines_core"), "plot": ("matplotlib",), "finetune": ("peft",),
          "dev": ("hypothesis", "openai")}


def pytest_sessionstart(session):
    from importlib.util import find_spec

    missing = {extra: [m for m in mods if find_spec(m) is None] for extra, mods in EXTRAS.items()}
    missing = {extra: mods for extra, mods in missing.items() if mods}
    if missing:
        named = "; ".join(f"{', '.join(mods)} (extra '{extra}')" for extra, mods in missing.items())
        pytest.exit(f"missing optional dependencies: {named}. Install them: make setup "
                    f"(or pip install -e '.[{','.join(missing)}]')", returncode=4)


WORDS = ("the light living room kitchen turn on off play music song quiet loud warm cold door open close "
         "good bad great awful movie film story actor fun boring love hate bright dark house garden robot "
         "phone speaker morning evening small large fast slow one two three red green blue window heater").split()


def synthetic_text(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + ".")
    return "\n".join(lines) + "\n"


def _byte_bpe(texts, vocab_size=320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def make_tiny_llama(path: Path, seed: int = 0, **overrides) -> Path:
    """A 3-layer random Llama (GQA 4 heads / 2 kv heads, hidden 96 so group sizes of 64 are ragged)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _byte_bpe(synthetic_text().splitlines())
    cfg = dict(vocab_size=len(tok), hidden_size=96, intermediate_size=192, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():  # larger-than-default init, so layers matter and outputs are not near-uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def make_tiny_decoder(path: Path, family: str, seed: int = 0, **overrides) -> Path:
    """A tiny random Qwen2 (Q/K/V biases, tied), Mistral (untied head), Qwen3 (Q/K RMSNorm, head_dim 32 ≠
    hidden / heads, tied) or Gemma (norms scale by 1 + w, embedding × √hidden, GELU, head_dim 32, tied) causal LM
    with a byte-level BPE tokenizer, saved to *path*; 2 layers unless *overrides* (config fields) say otherwise."""
    import transformers

    tok = _byte_bpe(synthetic_text().splitlines())
    cls = {"qwen2": "Qwen2", "mistral": "Mistral", "qwen3": "Qwen3", "gemma": "Gemma"}[family]
    extra = {"head_dim": 32} if family in ("qwen3", "gemma") else {}
    fields = dict(vocab_size=len(tok), hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, tie_word_embeddings=family != "mistral", **extra)
    cfg = getattr(transformers, f"{cls}Config")(**{**fields, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, f"{cls}ForCausalLM")(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 or name.endswith("bias"):
                p.normal_(0, 0.08)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                p.uniform_(0.5, 1.5)          # not all ones, so a norm dropped or misplaced would show
            elif family == "gemma" and name.endswith("norm.weight"):
                p.uniform_(-0.5, 0.5)         # Gemma's norms scale by 1 + w: not zero, so a lost offset would show
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_chat_llama(path: Path) -> Path:
    """The tiny Llama with a ChatML chat template on its tokenizer (task fine-tuning and evaluation)."""
    from transformers import AutoTokenizer

    make_tiny_llama(path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHATML
    tok.save_pretrained(path)
    return path


def smart_home_rows(n: int = 48, seed: int = 0, chat: bool = True) -> list[dict]:
    """*n* tiny task examples "turn on the kitchen light" -> '{"device": ..., "room": ..., "action": ...}',
    as chats (system, user, assistant) or as {prompt, completion} pairs."""
    import json

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        room, dev, act = rng.choice(("kitchen", "living room", "garden")), rng.choice(("light", "heater", "speaker")), \
            rng.choice(("on", "off"))
        cmd, reply = f"turn {act} the {room} {dev}", json.dumps({"device": dev, "room": room, "action": act})
        rows.append({"messages": [{"role": "system", "content": "reply with JSON"}, {"role": "user", "content": cmd},
                                  {"role": "assistant", "content": reply}]} if chat else {"prompt": cmd + ":", "completion": reply})
    return rows


def make_tiny_bert(path: Path, classification: bool = False, seed: int = 0) -> Path:
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(synthetic_text().splitlines(), vocab_size=200, min_frequency=1)
    path.mkdir(parents=True, exist_ok=True)
    wp.save_model(str(path))
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128, num_labels=2)
    torch.manual_seed(seed)
    model = (BertForSequenceClassification if classification else BertModel)(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def tiny_bert_cls(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert-cls", classification=True)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "text.txt"
    p.write_text(synthetic_text(600, seed=1))
    return p


@pytest.fixture(scope="session")
def tsv_file(tmp_path_factory) -> Path:
    rng = random.Random(3)
    lines = []
    for _ in range(64):
        label = rng.randint(0, 1)
        word = rng.choice(["good", "great", "love", "fun"] if label else ["bad", "awful", "hate", "boring"])
        lines.append(f"the movie was {word} and {rng.choice(WORDS)}\t{label}")
    p = tmp_path_factory.mktemp("data") / "cls.tsv"
    p.write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    return p


def run_cli(*argv) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from edgellm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()
