"""High-level calls that tie loading, runtimes and evaluation together (used by the CLI too)."""

from __future__ import annotations

from .data import WIKI_TEST, read_tsv, tokenize_file
from .errors import EdgeLLMError
from .runtimes import open_runtime


def evaluate(model, ppl: str | None = None, ctx: int = 512, max_tokens: int | None = 20480, reference=None,
             tsv: str | None = None, runtime: str = "auto", threads: int | None = None, device: str | None = None,
             batch_size: int = 32, max_rows: int | None = None, progress: bool = False, tokenizer=None,
             load_kwargs: dict | None = None) -> dict:
    """Perplexity (and KL/top-1 against *reference*) for LMs; accuracy on *tsv* for classifiers.

    *model* and *reference* are specs (paths, built-in names), ``Loaded`` records or open runtimes.

    >>> evaluate("smollm2-135m", ppl="wikitext-2/wiki.test.raw")["perplexity"]["perplexity"]  # doctest: +SKIP
    28.7
    """
    from .evaluation import accuracy, evaluate_lm

    rt = _as_runtime(model, runtime, threads, device, load_kwargs)
    out: dict = {"model": _describe(model), "runtime": rt.name, "threads": getattr(rt, "threads", None)}
    if tsv is not None:
        res = accuracy(rt, read_tsv(tsv, limit=max_rows), batch_size=batch_size, progress=progress)
        out["classification"] = res.to_dict()
        return out
    tok = tokenizer or getattr(rt, "tokenizer", None)
    if tok is None:
        raise EdgeLLMError("the model has no tokenizer to read the evaluation text", "pass a model folder with a tokenizer")
    ref_rt = _as_runtime(reference, "auto", threads, device, None) if reference is not None else None
    ids = tokenize_file(tok, ppl or WIKI_TEST, max_tokens=max_tokens)
    res = evaluate_lm(rt, ids, ctx=ctx, max_tokens=max_tokens, reference=ref_rt, progress=progress)
    out["perplexity"] = res.to_dict()
    out["text"] = str(ppl or WIKI_TEST)
    if reference is not None:
        out["reference"] = _describe(reference)
    return out


def _as_runtime(model, runtime, threads, device, load_kwargs):
    if hasattr(model, "logits") and hasattr(model, "generate") and hasattr(model, "weight_bytes"):
        return model
    return open_runtime(model, runtime=runtime, threads=threads, device=device, **(load_kwargs or {}))


def _describe(model) -> str:
    meta = getattr(model, "meta", None)
    return getattr(meta, "name", None) or str(model)
