"""Constrained decoding: a JSON schema becomes a per-token mask, so the output always parses and matches.

The schema is compiled to a regular expression and then to a token-level automaton over the model's
vocabulary by ``outlines-core`` (Rust; ``pip install 'edgellm[serve]'``). On top of it this module adds:

* a **budget guarantee**: the distance (in tokens) from every automaton state to an accepting state is
  precomputed, and a token is allowed only if the JSON can still be closed within the tokens left, so
  even a run that hits ``max_tokens`` ends in a complete, schema-valid document;
* a **keyword check**: the regex compiler silently ignores some JSON-schema keywords (``minimum``,
  ``multipleOf`` ...); schemas using them are refused up front instead of producing output that parses
  but does not validate.

It works with any runtime whose ``generate`` accepts ``logits_processor(generated_ids, logits_row)``.
Deliberately absent: grammars other than JSON schema, and tokenizers that are neither byte-level BPE
nor SentencePiece (both cover Llama/SmolLM2/GPT-2 style models).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import torch

from ..errors import EdgeLLMError

# Keywords the regex compiler enforces (or that carry no constraint). Anything else is refused.
SUPPORTED_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "enum", "const", "items", "prefixItems",
    "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "anyOf", "oneOf", "allOf",
    "$ref", "$defs", "definitions", "title", "description", "default", "examples", "$schema", "$id",
    "$comment",
})
_SCHEMA_MAPS = ("properties", "$defs", "definitions")       # values are name -> subschema
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")  # values are lists of subschemas


def check_schema(schema) -> None:
    """Raise EdgeLLMError if *schema* is not a valid JSON schema or uses a keyword we cannot enforce.

    >>> check_schema({"type": "object", "properties": {"n": {"type": "integer"}}})
    >>> check_schema({"type": "integer", "minimum": 0})
    Traceback (most recent call last):
    ...
    edgellm.errors.EdgeLLMError: JSON schema keyword 'minimum' (at #) cannot be enforced by constrained decoding (remove it, or use 'enum' for a small set of allowed values)
    """
    import jsonschema

    if not isinstance(schema, dict):
        raise EdgeLLMError("the JSON schema must be an object", 'pass {"type": "object", "properties": {...}}')
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise EdgeLLMError(f"invalid JSON schema: {e.message}", "fix the schema (see json-schema.org)") from e
    _check_keywords(schema, "#")


def _check_keywords(node, where: str) -> None:
    if isinstance(node, bool):
        return
    for key, value in node.items():
        if key not in SUPPORTED_KEYWORDS:
            raise EdgeLLMError(f"JSON schema keyword '{key}' (at {where}) cannot be enforced by constrained decoding",
                               "remove it, or use 'enum' for a small set of allowed values")
        if key in _SCHEMA_MAPS:
            for name, sub in value.items():
                _check_keywords(sub, f"{where}/{key}/{name}")
        elif key in _SCHEMA_LISTS:
            for i, sub in enumerate(value):
                _check_keywords(sub, f"{where}/{key}/{i}")
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            _check_keywords(value, f"{where}/{key}")


# -- vocabulary: token id -> the exact bytes it stands for ----------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-unicode table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def token_bytes(tokenizer) -> dict[int, bytes]:
    """Map every ordinary (non-special) token id to the bytes it decodes to (HF or llama.cpp tokenizer).

    >>> token_bytes(tok)[tok.convert_tokens_to_ids("Ġthe")]      # doctest: +SKIP
    b' the'
    """
    if not hasattr(tokenizer, "get_vocab") and hasattr(tokenizer, "llm"):
        # llama.cpp's tokenizer (runtimes/llamacpp.py): each token's piece; control tokens have none
        llm = tokenizer.llm
        pieces = {i: llm.detokenize([i], special=False) for i in range(len(tokenizer))}
        return {i: b for i, b in pieces.items() if b}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    vocab = tokenizer.get_vocab()
    u2b = {c: b for b, c in _bytes_to_unicode().items()}
    byte_level = all(ch in u2b for tok in list(vocab)[:2000] for ch in tok if not tok.startswith("<"))
    out: dict[int, bytes] = {}
    for tok, i in vocab.items():
        if i in special:
            continue
        if byte_level:
            if all(ch in u2b for ch in tok):
                out[i] = bytes(u2b[ch] for ch in tok)
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):     # SentencePiece byte fallback
            out[i] = bytes([int(tok[3:5], 16)])
        else:
            out[i] = tok.replace("\u2581", " ").encode("utf-8")                   # SentencePiece "▁" = space
    if not out:
        raise EdgeLLMError("the tokenizer's vocabulary could not be mapped to bytes",
                           "constrained decoding supports byte-level BPE and SentencePiece tokenizers")
    return out


def eos_id_of(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise EdgeLLMError("the tokenizer has no end-of-sequence token", "constrained decoding needs one to end the output")
    return int(eos)


# -- the compiled schema -------------------------------------------------------------------------------
@dataclass
class CompiledSchema:
    """A schema compiled against one vocabulary: automaton, distances to acceptance and cached masks."""

    index: object                     # outlines_core.Index
    initial: int
    finals: frozenset
    transitions: dict                 # state -> {token_id: next_state}
    distance: dict                    # state -> fewest tokens to reach an accepting state
    eos_id: int
    vocab_rows: int
    longest: int                      # the largest distance: budgets above it never limit a token
    closed: frozenset                 # accepting states that nothing but end-of-sequence may follow
    _masks: dict

    def min_tokens(self) -> int:
        """Fewest tokens any valid output needs (so ``max_tokens`` below it can never succeed)."""
        return self.distance[self.initial]

    def allowed(self, state: int, budget: int) -> torch.Tensor:
        """Bool mask [vocab_rows] of tokens allowed in *state* with *budget* tokens left (this one included).

        Masks without a budget limit are cached per state; near the end of the budget they are built fresh.
        """
        limited = budget <= self.longest
        mask = None if limited else self._masks.get(state)
        if mask is None:
            mask = torch.zeros(self.vocab_rows, dtype=torch.bool)
            edges = self.transitions.get(state, {})
            ok = [t for t, nxt in edges.items() if not limited or self.distance.get(nxt, budget) <= budget - 1]
            if ok:
                mask[torch.tensor(ok, dtype=torch.long)] = True
            if state in self.finals:
                mask[self.eos_id] = True
            if not limited:
                self._masks[state] = mask
        return mask


def _distances(transitions: dict, finals: frozenset) -> dict:
    """Reverse breadth-first search: fewest tokens from each state to an accepting state."""
    reverse: dict[int, set] = {}
    for s, edges in transitions.items():
        for nxt in set(edges.values()):
            reverse.setdefault(nxt, set()).add(s)
    dist = {f: 0 for f in finals}
    todo = deque(finals)
    while todo:
        s = todo.popleft()
        for prev in reverse.get(s, ()):
            if prev not in dist:
                dist[prev] = dist[s] + 1
                todo.append(prev)
    return dist


class SchemaCompiler:
    """Compiles schemas for one tokenizer; the vocabulary is built once, the last few schemas are cached.

    >>> c = SchemaCompiler(tokenizer, vocab_rows=49152)                       # doctest: +SKIP
    >>> proc = c.processor(c.compile({"type": "boolean"}), max_tokens=8)       # doctest: +SKIP
    """

    def __init__(self, tokenizer, vocab_rows: int | None = None, cache_size: int = 16,
                 tokenizer_lock: threading.Lock | None = None):
        self.tokenizer = tokenizer
        self.tokenizer_lock = tokenizer_lock or threading.Lock()   # shared with whoever else uses the tokenizer
        self.vocab_rows = int(vocab_rows or len(tokenizer))
        self.cache_size = cache_size
        self._vocabulary = None
        self._cache: OrderedDict[str, CompiledSchema] = OrderedDict()
        self._lock = threading.Lock()

    def _vocab(self):
        try:
            import outlines_core
        except ImportError as e:
            raise EdgeLLMError("constrained output needs outlines-core", "pip install 'edgellm[serve]'") from e
        if self._vocabulary is None:
            eos = eos_id_of(self.tokenizer)
            by_bytes: dict[bytes, list[int]] = {}
            with self.tokenizer_lock:
                table = token_bytes(self.tokenizer)
            for i, b in table.items():
                if i != eos and i < self.vocab_rows:
                    by_bytes.setdefault(b, []).append(i)
            self._vocabulary = outlines_core.Vocabulary(eos, by_bytes)
        return self._vocabulary

    def compile(self, schema: dict) -> CompiledSchema:
        """Check and compile *schema* (cached by its JSON text)."""
        import outlines_core

        key = json.dumps(schema)          # not sorted: property order is the order the output follows
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        check_schema(schema)
        try:
            regex = outlines_core.json_schema.build_regex_from_schema(key)
        except (ValueError, TypeError) as e:
            raise EdgeLLMError(f"the JSON schema cannot be compiled for constrained decoding: {e}",
                               "simplify the schema (objects, arrays, strings, numbers, enums)") from e
        with self._lock:
            vocabulary = self._vocab()
        try:
            index = outlines_core.Index(regex, vocabulary)
        except (ValueError, RuntimeError) as e:
            raise EdgeLLMError(f"the JSON schema cannot be compiled against this vocabulary: {e}",
                               "simplify the schema") from e
        transitions = index.get_transitions()
        finals = frozenset(index.get_final_states())
        distance = _distances(transitions, finals)
        initial = index.get_initial_state()
        if initial not in distance:
            raise EdgeLLMError("no output can satisfy this JSON schema with this vocabulary", "check the schema")
        compiled_eos = eos_id_of(self.tokenizer)
        compiled = CompiledSchema(index, initial, finals, transitions, distance, compiled_eos,
                                  self.vocab_rows, max(distance.values()),
                                  frozenset(f for f in finals if all(t == compiled_eos for t in transitions.get(f, {}))), {})
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def processor(self, compiled: CompiledSchema, max_tokens: int) -> "JsonLogitsProcessor":
        if max_tokens < compiled.min_tokens():
            raise EdgeLLMError(f"max_tokens={max_tokens} is too small for this JSON schema",
                               f"the shortest valid output needs {compiled.min_tokens()} tokens")
        return JsonLogitsProcessor(compiled, max_tokens)


class JsonLogitsProcessor:
    """``logits_processor(generated_ids, logits_row)`` for ``Runtime.generate``: masks every token that would
    leave the schema's language or make it impossible to finish within ``max_tokens``."""

    def __init__(self, compiled: CompiledSchema, max_tokens: int):
        self.c = compiled
        self.max_tokens = max_tokens
        self.state = compiled.initial
        self._seen = 0

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        self.update(generated)
        mask = self.c.allowed(self.state, self.max_tokens - len(generated))
        n = min(mask.numel(), logits.numel())
        out = torch.full_like(logits, float("-inf"))
        out[:n] = torch.where(mask[:n], logits[:n], out[:n])
        return out

    def update(self, generated: list[int]) -> None:
        """Advance the automaton over the tokens sampled since the last call."""
        for tok in generated[self._seen:]:
            self.advance(tok)
        self._seen = len(generated)

    def advance(self, tok: int) -> None:
        if tok == self.c.eos_id:
            return
        nxt = self.c.transitions.get(self.state, {}).get(tok)
        if nxt is None:
            raise EdgeLLMError(f"token {tok} is not allowed by the schema here", "this is a bug in constrained decoding")
        self.state = nxt

    def finished(self) -> bool:
        """True when the output is complete and nothing but end-of-sequence may follow."""
        return self.state in self.c.closed
