"""llama.cpp runtime: a ``.gguf`` file run by ``llama-cpp-python`` behind the Runtime interface.

``logits`` evaluates one window with every position's logits (``logits_all``), from an empty
KV cache; ``generate`` decodes with the KV cache and asks llama.cpp for the last position's
logits only, so prefill speed is llama.cpp's own. Greedy and temperature/top-p sampling run in
the same ``base.decode_loop`` as every other runtime; ``grammar=`` (GBNF text, a JSON schema dict,
or a ``LlamaGrammar``) hands sampling to llama.cpp's grammar sampler instead. The tokenizer
is llama.cpp's own (the one embedded in the GGUF), wrapped with the small HF-like surface
edgellm uses (``__call__``, ``encode``, ``decode``, ``apply_chat_template``).

Deliberately absent: GPU offload (this build is CPU-only), batching several sequences, and
LoRA adapters. The built-in ``smollm2-135m`` opens its shipped Q4_1 GGUF directly.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import EdgeLLMError
from ..models import BUILTINS, builtin_path, check_gguf
from .base import decode_loop

DEFAULT_MAX_CTX = 2048      # KV cache positions unless n_ctx= asks for more (the model's limit caps it)


def import_llama_cpp():
    """``llama_cpp``, or an EdgeLLMError naming the extra to install."""
    try:
        import llama_cpp
    except ImportError as e:
        raise EdgeLLMError("the llama.cpp runtime needs the package 'llama-cpp-python'",
                           "pip install 'edgellm[llamacpp]' (it compiles llama.cpp, about 5 minutes)") from e
    return llama_cpp


def gguf_path(spec) -> Path:
    """The .gguf file behind *spec*: a path, or a built-in whose shipped file is a GGUF."""
    if isinstance(spec, (str, os.PathLike)) and str(spec) in BUILTINS:
        if BUILTINS[str(spec)].rotate_seed is not None:     # derived from the shipped file: no GGUF of its own
            raise EdgeLLMError(f"built-in '{spec}' has no GGUF file of its own",
                               f"export it first: edgellm export {spec} --format gguf --out model.gguf")
        path = builtin_path(str(spec))
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
    else:
        raise EdgeLLMError(f"the llama.cpp runtime runs .gguf files, not a {type(spec).__name__}",
                           "export the model first: edgellm export MODEL --format gguf --out model.gguf")
    if path.suffix != ".gguf" or path.is_dir():
        raise EdgeLLMError(f"the llama.cpp runtime runs .gguf files; '{spec}' is not one",
                           "export it first (edgellm export MODEL --format gguf --out model.gguf) or use --runtime torch")
    if not path.exists():
        raise EdgeLLMError(f"GGUF file '{path}' does not exist", "check the path")
    return path


def read_gguf_info(path: Path) -> dict:
    """Architecture, context length, vocabulary size and per-tensor bytes from the GGUF header."""
    from gguf import GGUFReader

    arch = check_gguf(path)["gguf_architecture"]
    reader = GGUFReader(str(path))

    def value(key, default=None):
        field = reader.fields.get(key)
        return field.contents() if field is not None else default

    tensors = {t.name: int(t.n_bytes) for t in reader.tensors}
    n_vocab = value(f"{arch}.vocab_size") or len(value("tokenizer.ggml.tokens", []) or []) or None
    return {"architecture": arch, "context_length": value(f"{arch}.context_length"), "n_vocab": n_vocab,
            "tensor_bytes": tensors, "chat_template": value("tokenizer.chat_template"),
            "file_type": value("general.file_type")}


class LlamaCppTokenizer:
    """llama.cpp's tokenizer with the HF-like calls edgellm needs.

    >>> tok = LlamaCppRuntime.open("model.gguf").tokenizer                # doctest: +SKIP
    >>> tok("Hello", add_special_tokens=False)["input_ids"]               # doctest: +SKIP
    [19556]
    """

    def __init__(self, llm, chat_template: str | None):
        self.llm = llm
        self.chat_template = chat_template
        self.bos_token_id = llm.token_bos() if llm.token_bos() >= 0 else None
        self.eos_token_id = llm.token_eos() if llm.token_eos() >= 0 else None
        self.bos_token = self._piece(self.bos_token_id)
        self.eos_token = self._piece(self.eos_token_id)
        self.add_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"

    def _piece(self, tid):
        return None if tid is None else self.llm.detokenize([tid], special=True).decode("utf-8", "replace")

    def __len__(self) -> int:
        return self.llm.n_vocab()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of *text*; special-token text (``<|im_start|>``) is parsed as the special token."""
        if not text:
            return [self.bos_token_id] if add_special_tokens and self.add_bos and self.bos_token_id is not None else []
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens and self.add_bos, special=True)

    def __call__(self, text: str, add_special_tokens: bool = True, **_) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        return self.llm.detokenize(ids, special=not skip_special_tokens).decode("utf-8", "replace")

    def apply_chat_template(self, messages: list[dict], tokenize: bool = True, add_generation_prompt: bool = False,
                            **kwargs):
        """Render *messages* with the chat template embedded in the GGUF (Jinja, sandboxed)."""
        if not self.chat_template:
            raise EdgeLLMError("this GGUF has no chat template (tokenizer.chat_template)",
                               "re-export it from a model whose tokenizer has a chat template")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise EdgeLLMError(f"chat template rejected the messages: {msg}", "check the message roles")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, **kw: json.dumps(x, **kw)
        text = env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token or "",
            eos_token=self.eos_token or "", raise_exception=raise_exception, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def make_grammar(grammar, llm=None):
    """A ``LlamaGrammar`` from GBNF text, a JSON-schema dict, or an existing grammar.

    With *llm*, the grammar is parsed by llama.cpp once up front: llama-cpp-python hands an
    unparsable grammar to the sampler chain as a null pointer, which crashes the process.
    """
    import llama_cpp
    from llama_cpp import LlamaGrammar

    if grammar is None:
        return None
    try:
        if isinstance(grammar, dict):
            grammar = LlamaGrammar.from_json_schema(json.dumps(grammar), verbose=False)
        elif not isinstance(grammar, LlamaGrammar):
            grammar = LlamaGrammar.from_string(str(grammar), verbose=False)
    except (ValueError, RuntimeError, TypeError) as e:
        raise EdgeLLMError(f"llama.cpp cannot parse the grammar: {e}", "pass valid GBNF or a JSON schema") from e
    if llm is not None:
        probe = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar._grammar.encode("utf-8"),
                                                     grammar._root.encode("utf-8"))
        if not probe:
            raise EdgeLLMError("llama.cpp cannot parse the grammar (see the parser message above)",
                               "pass valid GBNF (root ::= ...) or a JSON schema")
        llama_cpp.llama_sampler_free(probe)
    return grammar


class LlamaCppRuntime:
    """Runtime over a GGUF file in llama.cpp.

    >>> rt = LlamaCppRuntime.open("out/model.gguf", threads=2)              # doctest: +SKIP
    >>> rt.logits(torch.tensor([1, 2, 3])).shape                           # doctest: +SKIP
    torch.Size([3, 49152])
    >>> list(rt.generate(torch.tensor([1, 2, 3]), 4, grammar='root ::= "yes" | "no"'))  # doctest: +SKIP
    """

    name = "llama.cpp"

    def __init__(self, path: Path, llm, info: dict, threads: int):
        self.path = path
        self.llm = llm
        self.info = info
        self.threads = threads
        self.max_positions = llm.n_ctx()
        self.vocab_size = llm.n_vocab()
        self.tokenizer = LlamaCppTokenizer(llm, info.get("chat_template"))

    @classmethod
    def open(cls, spec, threads: int | None = None, n_ctx: int | None = None, device: str | None = None,
             task: str | None = None, **_ignored) -> "LlamaCppRuntime":
        """Open a .gguf (or a built-in shipped as GGUF) with *n_ctx* KV positions (default ≤ 2048)."""
        llama_cpp = import_llama_cpp()
        if device not in (None, "cpu"):
            raise EdgeLLMError(f"the llama.cpp runtime here runs on the CPU only (asked for '{device}')",
                               "drop --device, or use --runtime torch")
        if task not in (None, "causal-lm"):
            raise EdgeLLMError(f"the llama.cpp runtime runs causal LMs, not task '{task}'", "use --runtime torch")
        path = gguf_path(spec)
        info = read_gguf_info(path)
        limit = int(info["context_length"] or DEFAULT_MAX_CTX)
        n_ctx = int(n_ctx or min(limit, DEFAULT_MAX_CTX))
        if n_ctx > limit:
            raise EdgeLLMError(f"n_ctx {n_ctx} is beyond the model's context length ({limit})", f"use n_ctx ≤ {limit}")
        threads = int(threads or os.cpu_count() or 1)
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_ubatch=min(n_ctx, 512),
                                  n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise EdgeLLMError(f"llama.cpp cannot load '{path}' ({info['architecture']}): {e}",
                               "re-export it with edgellm export --format gguf, or check the llama-cpp-python version") from e
        return cls(path, llm, info, threads)

    # -- the Runtime interface ------------------------------------------------------------
    @contextlib.contextmanager
    def _outputs(self, every_position: bool):
        """llama-cpp-python asks llama.cpp for all positions' logits when ``_logits_all`` is set; a prompt
        being decoded needs only the last one (the output head is ~20% of a small model's FLOPs)."""
        old = self.llm._logits_all
        self.llm._logits_all = every_position
        try:
            yield
        finally:
            self.llm._logits_all = old

    def _check_ids(self, ids: torch.Tensor, extra: int = 0) -> list[int]:
        ids = [int(i) for i in ids.view(-1).tolist()]
        if not ids:
            raise EdgeLLMError("no input tokens", "pass at least one token id")
        if len(ids) + extra > self.max_positions:
            raise EdgeLLMError(f"{len(ids) + extra} positions exceed this llama.cpp context ({self.max_positions})",
                               "open the runtime with a larger n_ctx, or use a shorter input")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise EdgeLLMError(f"token id out of range for a vocabulary of {self.vocab_size}", "check the tokenizer")
        return ids

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        tokens = self._check_ids(ids)
        self.llm.reset()
        with self._outputs(True):
            self.llm.eval(tokens)
        return torch.from_numpy(np.array(self.llm.scores[: len(tokens)], dtype=np.float32, copy=True))

    def _last_logits(self) -> torch.Tensor:
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)).copy())

    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop_ids=(), logits_processor=None, grammar=None) -> Iterator[int]:
        """Yield up to *max_new_tokens* ids; stops early only on *stop_ids* (EOS is ignored otherwise).

        *logits_processor(generated_ids, logits) -> logits* constrains decoding in Python; *grammar*
        (GBNF text, JSON-schema dict or ``LlamaGrammar``) constrains it inside llama.cpp.
        """
        tokens = self._check_ids(ids, extra=max_new_tokens)
        if grammar is not None:
            if logits_processor is not None:
                raise EdgeLLMError("pass either grammar= or logits_processor=, not both", "drop one of them")
            yield from self._generate_grammar(tokens, max_new_tokens, temperature, top_p, seed, stop_ids, grammar)
            return
        self.llm.reset()

        def feed(toks: list[int]) -> torch.Tensor:        # the prompt, then one token at a time
            self.llm.eval(toks)
            return self._last_logits()

        with self._outputs(False):
            yield from decode_loop(lambda: feed(tokens), lambda tok: feed([tok]), max_new_tokens, temperature, top_p,
                                   seed, stop_ids, logits_processor)

    def _generate_grammar(self, tokens, max_new_tokens, temperature, top_p, seed, stop_ids, grammar):
        import llama_cpp

        grammar = make_grammar(grammar, self.llm)
        self.llm.set_seed(seed if seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        self.llm.reset()
        n = 0
        with self._outputs(False):
            for tok in self.llm.generate(tokens, temp=max(temperature, 0.0), top_p=top_p, top_k=0, min_p=0.0,
                                         typical_p=1.0, repeat_penalty=1.0, reset=True, grammar=grammar):
                n += 1
                yield int(tok)
                if tok in stop_ids or n == max_new_tokens:
                    return

    def weight_bytes(self) -> int:
        """Bytes read per decoded token: every tensor, minus the input embedding when a separate output head exists."""
        sizes = self.info["tensor_bytes"]
        total = sum(sizes.values())
        if "output.weight" in sizes and "token_embd.weight" in sizes:
            total -= sizes["token_embd.weight"]
        return total

    def file_bytes(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        self.llm.close() if hasattr(self.llm, "close") else None
