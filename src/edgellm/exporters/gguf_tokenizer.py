"""The tokenizer part of a GGUF file: ``tokenizer.ggml.*`` values for a fast byte-level BPE tokenizer.

``tokenizer_metadata`` reads the tokenizers.json of a Hugging Face fast tokenizer and returns
what llama.cpp's converter writes: tokens padded to the model's vocabulary, token types,
merges, the pre-tokenizer name llama.cpp knows the split regex by, special ids, the add-BOS/EOS
flags (probed) and the chat template. Deliberately absent: SentencePiece/Unigram/WordPiece
tokenizers and pre-tokenizers llama.cpp would not recognise (both are errors).
"""

from __future__ import annotations

import json

from ..errors import EdgeLLMError


def _pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizers.json ``pre_tokenizer`` (byte-level BPE only)."""
    if pre is None:
        raise EdgeLLMError("the tokenizer has no pre-tokenizer", "GGUF export supports byte-level BPE tokenizers")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        kinds = [(p.get("type"), p) for p in pre.get("pretokenizers", [])]
        names = [k for k, _ in kinds]
        if names == ["Digits", "ByteLevel"] and kinds[0][1].get("individual_digits") and kinds[1][1].get("use_regex", True):
            return "smollm"
        if names == ["Split", "ByteLevel"] and not kinds[1][1].get("use_regex", True):
            regex = (kinds[0][1].get("pattern") or {}).get("Regex", "")
            if "\\p{N}{1,3}" in regex:
                return "llama-bpe"
            if "\\p{N}" in regex and "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+" in regex:
                return "qwen2"
    raise EdgeLLMError(f"GGUF export does not recognise this pre-tokenizer ({json.dumps(pre)[:120]})",
                       "supported: GPT-2 byte-level, SmolLM (digits + byte-level), Llama-3 and Qwen2 regex splits")


def tokenizer_metadata(tok, vocab_size: int) -> dict:
    """tokenizer.ggml.* values for a fast byte-level BPE tokenizer, padded to the model's vocab size.

    >>> tokenizer_metadata(load("smollm2-135m").tokenizer, 49152)["pre"]      # doctest: +SKIP
    'smollm'
    """
    import gguf

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise EdgeLLMError("GGUF export needs a fast (tokenizers) tokenizer", "save the model with a tokenizer.json")
    j = json.loads(backend.to_str())
    model = j.get("model", {})
    if model.get("type") != "BPE" or (j.get("decoder") or {}).get("type") != "ByteLevel":
        raise EdgeLLMError(f"GGUF export supports byte-level BPE tokenizers, not {model.get('type')} with a "
                           f"{(j.get('decoder') or {}).get('type')} decoder", "export a model with a GPT-2 style tokenizer")
    if len(tok) > vocab_size:
        raise EdgeLLMError(f"the tokenizer has {len(tok)} tokens but the model only {vocab_size} embeddings",
                           "use the model's own tokenizer")
    tokens = [None] * vocab_size
    types = [gguf.TokenType.NORMAL] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i] = text
    for a in j.get("added_tokens", []):
        tokens[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tok("a b", add_special_tokens=True)["input_ids"]
    special = {k: getattr(tok, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")}
    return {"pre": _pre_tokenizer_name(j.get("pre_tokenizer")), "tokens": tokens, "types": [int(t) for t in types],
            "merges": merges, "special": {k: v for k, v in special.items() if v is not None},
            "add_bos": special["bos"] is not None and probe[:1] == [special["bos"]],
            "add_eos": special["eos"] is not None and len(probe) > 1 and probe[-1] == special["eos"],
            "chat_template": getattr(tok, "chat_template", None)}
