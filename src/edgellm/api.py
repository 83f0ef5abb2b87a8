"""``evaluate(model, EvalConfig) -> EvalResult``: quality of a model, from loading to figures (the CLI's ``eval``).

A causal LM gets perplexity on a text (and KL/top-1 agreement against ``reference``); a
classifier gets accuracy on a ``tsv`` file. ``EvalConfig`` says what to measure, each default
stated once; how to open the model (runtime, threads, device, loader options) are keyword
arguments, as the model may already be an open runtime. The loops themselves live in
``evaluation/`` (``evaluate_lm``, ``accuracy``); speed and memory are ``edgellm.bench``'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .calibconfig import config_field
from .data import WIKI_TEST, read_tsv, tokenize_file
from .errors import EdgeLLMError
from .evaluation import accuracy, evaluate_lm
from .results import Result
from .runtimes import open_runtime

if TYPE_CHECKING:
    from .evaluation import ClassifyResult, PerplexityResult


@dataclass(frozen=True)
class EvalConfig:
    """What ``evaluate`` measures: perplexity of an LM on *ppl* in *ctx*-token windows, or accuracy on *tsv*.

    *reference* is a model spec (the API also takes a ``Loaded`` record or an open runtime);
    ``max_tokens`` 0 or None scores the whole text.

    >>> EvalConfig(ctx=256, max_tokens=0).max_tokens is None
    True
    """

    ppl: str | None = config_field(None, f"text file for perplexity (none: {WIKI_TEST})", metavar="FILE")
    ctx: int = config_field(512, "window length in tokens")
    max_tokens: int | None = config_field(20480, "tokens to score (0 or none: all)")
    reference: str | None = config_field(None, "report KL and top-1 agreement against this model", metavar="MODEL")
    tsv: str | None = config_field(None, "sentence<TAB>label file: report a classifier's accuracy", metavar="FILE")
    batch_size: int = config_field(32, "classifier rows per batch")
    max_rows: int | None = config_field(None, "classifier rows read from --tsv (none: all)")

    def __post_init__(self):
        if self.max_tokens == 0:
            object.__setattr__(self, "max_tokens", None)
        for name, low in (("ctx", 2), ("max_tokens", 1), ("batch_size", 1), ("max_rows", 1)):
            v = getattr(self, name)
            if v is None and name in ("max_tokens", "max_rows"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise EdgeLLMError(f"eval {name} must be an integer ≥ {low} (got {v!r})",
                                   f"fix --{name.replace('_', '-')}")
        if self.tsv is not None and (self.ppl is not None or self.reference is not None):
            raise EdgeLLMError("--tsv (classifier accuracy) does not go with --ppl or --reference (LM perplexity)",
                               "give --tsv for a classifier, --ppl/--reference for a causal LM")


@dataclass
class EvalResult(Result):
    """What ``evaluate`` measured; ``to_dict()`` leaves out the parts that do not apply (the CLI's JSON)."""

    model: str
    runtime: str
    threads: int | None
    perplexity: PerplexityResult | None = None
    text: str | None = None
    reference: str | None = None
    classification: ClassifyResult | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in super().to_dict().items() if v is not None or k == "threads"}


def evaluate(model, config: EvalConfig | None = None, *, runtime: str = "auto", threads: int | None = None,
             device: str | None = None, progress: bool = False, tokenizer=None, load_kwargs: dict | None = None,
             **fields) -> EvalResult:
    """Perplexity (and KL/top-1 against ``config.reference``) for LMs; accuracy on ``config.tsv`` for classifiers.

    *model* is a spec (path, built-in name), a ``Loaded`` record or an open runtime. *fields* are
    ``EvalConfig`` fields, over *config* when both are given.

    >>> r = evaluate("smollm2-135m", EvalConfig(ppl="wikitext-2/wiki.test.raw"))   # doctest: +SKIP
    >>> r.perplexity.perplexity, evaluate("smollm2-135m", ctx=256).perplexity.ctx  # doctest: +SKIP
    (28.7, 256)
    """
    cfg = _config(config, fields)
    rt = _as_runtime(model, runtime, threads, device, load_kwargs)
    out = EvalResult(model=_describe(model), runtime=rt.name, threads=getattr(rt, "threads", None))
    if cfg.tsv is not None:
        out.classification = accuracy(rt, read_tsv(cfg.tsv, limit=cfg.max_rows), batch_size=cfg.batch_size,
                                      progress=progress)
        return out
    tok = tokenizer or getattr(rt, "tokenizer", None)
    if tok is None:
        raise EdgeLLMError("the model has no tokenizer to read the evaluation text", "pass a model folder with a tokenizer")
    ref_rt = _as_runtime(cfg.reference, "auto", threads, device, None) if cfg.reference is not None else None
    ids = tokenize_file(tok, cfg.ppl or WIKI_TEST, max_tokens=cfg.max_tokens)
    out.perplexity = evaluate_lm(rt, ids, ctx=cfg.ctx, max_tokens=cfg.max_tokens, reference=ref_rt, progress=progress)
    out.text = str(cfg.ppl or WIKI_TEST)
    if cfg.reference is not None:
        out.reference = _describe(cfg.reference)
    return out


def _config(config: EvalConfig | None, fields: dict) -> EvalConfig:
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise EdgeLLMError(f"evaluate: unknown option(s) {', '.join(unknown)}", f"EvalConfig fields: {', '.join(sorted(known))}")
    return dataclasses.replace(config, **fields) if config is not None else EvalConfig(**fields)


def _as_runtime(model, runtime, threads, device, load_kwargs):
    if hasattr(model, "logits") and hasattr(model, "generate") and hasattr(model, "weight_bytes"):
        return model
    return open_runtime(model, runtime=runtime, threads=threads, device=device, **(load_kwargs or {}))


def _describe(model) -> str:
    meta = getattr(model, "meta", None)
    return getattr(meta, "name", None) or str(model)
