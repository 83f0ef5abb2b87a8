"""The one registry of model families: where a family keeps its blocks, projections and norms, and what supports it.

One frozen ``FamilySpec`` per Hugging Face ``config.model_type``. Every subsystem reads model
layout from here instead of keeping its own table: the calibration runner (``blocks``), AWQ
(``awq_folds``, ``norm_offset``), the structured pruner (``attention``, ``mlp`` and the projection
roles), the GGUF writer (``gguf_arch``, ``rope_permute_qk``, ``norm_offset`` and the roles, which name
every GGUF tensor),
the ONNX and ExecuTorch exporters (``exporters``, ``ort_fusion``), and the pipeline stages
(``pipeline``, ``embed``, ``final_norm``). Adding a family is one ``FamilySpec`` in ``FAMILIES``
(or a ``register`` call) plus its tests.

Paths are dotted attribute paths. ``blocks``, ``embed`` and ``final_norm`` are relative to the
HF *base model* (``model.base_model``: ``LlamaForCausalLM.model``, ``BertForSequenceClassification.bert``,
or the model itself when it is the base), so one entry serves every head class of a family;
``lm_head`` is relative to the top-level model; projection and norm roles are relative to one
block. A role a family does not have (GPT-2's fused ``c_attn`` has no separate q/k/v) is None.

What a family computes differently but inside its own HF modules needs no field: Gemma's embedding
scale (√hidden, applied by its embedding module in transformers 5 and by llama.cpp's graph) and its
GELU MLP are used as they are by the ONNX/ExecuTorch exporters and the pipeline stages. A difference
that a subsystem must reproduce on raw weights is a field: ``norm_offset`` (Gemma's RMSNorm scales by
``1 + weight``), which AWQ's norm folds and the GGUF writer (llama.cpp stores ``1 + weight``) read.

``python -m edgellm.families`` prints the support table (Markdown) that ``docs/families.md``
holds between generated markers. Deliberately left out: per-checkpoint quirks (rope scaling,
sliding windows), which the exporters check on the config themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import EdgeLLMError
from .fileio import atomic_file

BLOCK_ROLES = ("q", "k", "v", "o", "gate", "up", "down", "input_norm", "post_attention_norm", "q_norm", "k_norm")
NORM_ROLES = ("input_norm", "post_attention_norm", "q_norm", "k_norm", "final_norm")   # scaled by norm_offset + w
EXPORTERS = ("gguf", "onnx", "executorch", "litert")
RUNTIME_OF = {"gguf": "llama.cpp", "onnx": "onnxruntime", "executorch": "executorch", "litert": "litert"}
KINDS = ("decoder", "encoder")


@dataclass(frozen=True)
class FamilySpec:
    """Layout and support of one HF ``model_type``; see the module docstring for what each path is relative to.

    >>> spec = family_of("qwen3")
    >>> spec.blocks, spec.q, spec.q_norm, spec.gguf_arch
    ('layers', 'self_attn.q_proj', 'self_attn.q_norm', 'qwen3')
    """

    model_type: str
    kind: str = "decoder"                    # "decoder" (causal LM) or "encoder" (BERT-like)
    blocks: str = "layers"                   # the block ModuleList, below the base model
    embed: str | None = "embed_tokens"       # below the base model
    final_norm: str | None = "norm"          # below the base model
    lm_head: str | None = "lm_head"          # below the top-level model
    rotary: str | None = "rotary_emb"        # the rotary embedding, below the base model (None: not rotary)
    attention: str | None = "self_attn"      # the attention module of a block
    mlp: str | None = "mlp"                  # the MLP module of a block
    q: str | None = "self_attn.q_proj"
    k: str | None = "self_attn.k_proj"
    v: str | None = "self_attn.v_proj"
    o: str | None = "self_attn.o_proj"
    gate: str | None = "mlp.gate_proj"
    up: str | None = "mlp.up_proj"
    down: str | None = "mlp.down_proj"
    input_norm: str | None = "input_layernorm"
    post_attention_norm: str | None = "post_attention_layernorm"
    q_norm: str | None = None                # per-head RMSNorm on Q/K before rotary (Qwen3)
    k_norm: str | None = None
    norm_offset: float = 0.0                 # the norms (NORM_ROLES) scale by norm_offset + weight (Gemma: 1)
    # AWQ: (producer, consumers) in one block; the producer's output channels take 1/s, the consumers'
    # inputs s. Only where the consumers read the producer's output through channel-wise linear steps.
    awq_folds: tuple[tuple[str, tuple[str, ...]], ...] = ()
    gguf_arch: str | None = None             # llama.cpp architecture name; None: no GGUF export
    rope_permute_qk: bool = False            # GGUF: permute Q/K rows to llama.cpp's interleaved rotary
    exporters: tuple[str, ...] = ()          # of EXPORTERS
    ort_fusion: str | None = None            # onnxruntime transformer-optimizer recipe (encoders)
    structured: bool = False                 # structured pruning (depth/width/heads)
    pipeline: bool = False                   # pipeline stages: embed -> blocks -> final norm, nothing else
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.model_type or not isinstance(self.model_type, str):
            raise EdgeLLMError(f"a family needs a model_type (got {self.model_type!r})", "use the HF config.model_type")
        if self.kind not in KINDS:
            raise EdgeLLMError(f"family '{self.model_type}': unknown kind '{self.kind}'", f"use one of: {', '.join(KINDS)}")
        bad = [e for e in self.exporters if e not in EXPORTERS]
        if bad:
            raise EdgeLLMError(f"family '{self.model_type}': unknown exporter(s) {bad}", f"use: {', '.join(EXPORTERS)}")
        if "gguf" in self.exporters and not self.gguf_arch:
            raise EdgeLLMError(f"family '{self.model_type}' lists gguf but has no gguf_arch", "set gguf_arch")
        need = {"structured": ("attention", "mlp", "q", "k", "v", "o", "gate", "up", "down"),
                "pipeline": ("embed", "final_norm", "lm_head")}
        for flag, roles in need.items():
            missing = [r for r in roles if getattr(self, flag) and getattr(self, r) is None]
            if missing:
                raise EdgeLLMError(f"family '{self.model_type}' claims {flag} but lacks {', '.join(missing)}",
                                   "name those modules or drop the flag")
        if self.norm_offset not in (0.0, 1.0):
            raise EdgeLLMError(f"family '{self.model_type}': norm_offset must be 0 or 1 (got {self.norm_offset})",
                               "0: norm scales by its weight; 1: by 1 + weight (Gemma)")
        for prod, cons in self.awq_folds:
            if not isinstance(prod, str) or not cons or not all(isinstance(c, str) for c in cons):
                raise EdgeLLMError(f"family '{self.model_type}': bad AWQ fold {(prod, cons)!r}",
                                   "use (producer, (consumer, ...)) with block-local names")

    @property
    def runtimes(self) -> tuple[str, ...]:
        """Runtimes that run this family: PyTorch always, plus each exporter's runtime."""
        return ("torch",) + tuple(RUNTIME_OF[e] for e in self.exporters)

    def role(self, name: str) -> str | None:
        """The block-local path of projection or norm role *name* (one of ``BLOCK_ROLES``), or None."""
        if name not in BLOCK_ROLES:
            raise EdgeLLMError(f"unknown block role '{name}'", f"use one of: {', '.join(BLOCK_ROLES)}")
        return getattr(self, name)

    def supports(self, feature: str) -> bool:
        """``feature`` is an exporter, a runtime, "structured", "pipeline" or "awq"."""
        if feature in EXPORTERS:
            return feature in self.exporters
        if feature in ("structured", "pipeline"):
            return bool(getattr(self, feature))
        if feature == "awq":
            return bool(self.awq_folds)
        return feature in self.runtimes


_LLAMA_FOLDS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("self_attn.v_proj", ("self_attn.o_proj",)),       # only without GQA: AWQ checks the shapes
    ("mlp.up_proj", ("mlp.down_proj",)),               # down reads act(gate) * up: linear in up's rows
)
_LLAMA = dict(awq_folds=_LLAMA_FOLDS, structured=True, pipeline=True)
_BERT = dict(kind="encoder", blocks="encoder.layer", embed="embeddings", final_norm=None, lm_head=None, rotary=None,
             attention="attention", mlp=None, q="attention.self.query", k="attention.self.key",
             v="attention.self.value", o="attention.output.dense", gate=None, up="intermediate.dense",
             down="output.dense", input_norm=None, post_attention_norm="attention.output.LayerNorm",
             awq_folds=(("attention.self.value", ("attention.output.dense",)),))

FAMILIES: dict[str, FamilySpec] = {s.model_type: s for s in (
    FamilySpec("llama", **_LLAMA, gguf_arch="llama", rope_permute_qk=True, exporters=("gguf", "onnx", "executorch", "litert")),
    FamilySpec("mistral", **_LLAMA, gguf_arch="llama", rope_permute_qk=True, exporters=("gguf", "executorch")),
    FamilySpec("qwen2", **_LLAMA, gguf_arch="qwen2", exporters=("gguf", "onnx", "executorch", "litert")),
    FamilySpec("qwen3", **_LLAMA, gguf_arch="qwen3", exporters=("gguf", "onnx", "executorch", "litert"),
               q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"),
    FamilySpec("gemma", **_LLAMA, gguf_arch="gemma", exporters=("gguf", "onnx", "executorch", "litert"), norm_offset=1.0,
               notes="RMSNorm scales by 1 + w; embedding scaled by √hidden; GELU-tanh MLP; tied head"),
    FamilySpec("phi3", q=None, k=None, v=None, gate=None, up=None, pipeline=True,
               notes="fused qkv_proj and gate_up_proj"),
    FamilySpec("olmo", pipeline=True, awq_folds=_LLAMA_FOLDS[2:], notes="norms without weights"),
    FamilySpec("olmo2", pipeline=True, input_norm=None, post_attention_norm="post_attention_layernorm",
               awq_folds=_LLAMA_FOLDS[2:], notes="norms after attention and MLP; q/k norms over all heads"),
    FamilySpec("granite_moe_shared", mlp=None, gate=None, up=None, down=None, pipeline=True,
               notes="mixture-of-experts MLP"),
    FamilySpec("gpt2", blocks="h", embed="wte", final_norm="ln_f", rotary=None, attention="attn", q=None, k=None, v=None,
               o="attn.c_proj", gate=None, up="mlp.c_fc", down="mlp.c_proj", input_norm="ln_1",
               post_attention_norm="ln_2", notes="Conv1D projections: not calibrated"),
    FamilySpec("gpt_neox", embed="embed_in", final_norm="final_layer_norm", lm_head="embed_out", attention="attention",
               q=None, k=None, v=None, o="attention.dense", gate=None, up="mlp.dense_h_to_4h",
               down="mlp.dense_4h_to_h", notes="fused query_key_value"),
    FamilySpec("opt", blocks="decoder.layers", rotary=None, embed="decoder.embed_tokens", final_norm="decoder.final_layer_norm",
               o="self_attn.out_proj", gate=None, up="fc1", down="fc2", input_norm="self_attn_layer_norm",
               post_attention_norm="final_layer_norm"),
    FamilySpec("bert", **_BERT, exporters=("onnx", "litert"), ort_fusion="bert"),
    FamilySpec("roberta", **_BERT, exporters=("onnx",), ort_fusion="bert"),
    FamilySpec("distilbert", kind="encoder", blocks="transformer.layer", embed="embeddings", final_norm=None,
               lm_head=None, rotary=None, attention="attention", mlp="ffn", q="attention.q_lin", k="attention.k_lin",
               v="attention.v_lin", o="attention.out_lin", gate=None, up="ffn.lin1", down="ffn.lin2",
               input_norm=None, post_attention_norm="sa_layer_norm",
               awq_folds=(("attention.v_lin", ("attention.out_lin",)),)),
)}


# -- lookups ---------------------------------------------------------------------------------------

def register(spec: FamilySpec, replace_existing: bool = False) -> FamilySpec:
    """Add *spec* to the registry (every subsystem sees it at once); returns it.

    >>> register(dataclasses.replace(family_of("llama"), model_type="my_llama"))   # doctest: +SKIP
    """
    if not isinstance(spec, FamilySpec):
        raise EdgeLLMError(f"register() takes a FamilySpec (got {type(spec).__name__})", "build one with FamilySpec(...)")
    if spec.model_type in FAMILIES and not replace_existing:
        raise EdgeLLMError(f"family '{spec.model_type}' is already registered", "pass replace_existing=True")
    FAMILIES[spec.model_type] = spec
    return spec


def unregister(model_type: str) -> None:
    """Remove a family (tests use it to undo ``register``)."""
    FAMILIES.pop(model_type, None)


def supporting(feature: str) -> tuple[str, ...]:
    """The model types that support *feature* (see ``FamilySpec.supports``), in registry order.

    >>> supporting("gguf")
    ('llama', 'mistral', 'qwen2', 'qwen3', 'gemma')
    """
    return tuple(t for t, s in FAMILIES.items() if s.supports(feature))


def _model_type(obj: Any) -> str | None:
    if isinstance(obj, str):
        return obj
    if getattr(obj, "config", None) is None and getattr(obj, "model", None) is not None:
        obj = obj.model                      # a ``models.Loaded``
    return getattr(getattr(obj, "config", obj), "model_type", None)


def family_of(model_or_config: Any) -> FamilySpec:
    """The ``FamilySpec`` of a model, a config or a ``model_type`` string; EdgeLLMError when unknown.

    >>> family_of("mistral").gguf_arch
    'llama'
    """
    mtype = _model_type(model_or_config)
    spec = FAMILIES.get(mtype)
    if spec is None:
        raise EdgeLLMError(f"unknown model family '{mtype}' ({type(model_or_config).__name__})",
                           f"supported model types: {', '.join(FAMILIES)}; a new family is one FamilySpec in "
                           "edgellm/families.py")
    return spec


def require(model: Any, feature: str, what: str) -> FamilySpec:
    """The model's family if it supports *feature*, else EdgeLLMError naming the families that do.

    >>> require(model, "gguf", "GGUF export").gguf_arch          # doctest: +SKIP
    'llama'
    """
    mtype = _model_type(model)
    spec = FAMILIES.get(mtype)
    if spec is None or not spec.supports(feature):
        raise EdgeLLMError(f"{what} does not support {type(model).__name__} (model_type '{mtype}')",
                           f"supported model types: {', '.join(supporting(feature))}")
    return spec


def export_support(fmt: str) -> dict[str, tuple[str, ...]]:
    """Task -> model types that exporter *fmt* takes: decoders as ``causal-lm``, encoders as ``classification``.

    >>> export_support("onnx")["classification"]
    ('bert', 'roberta')
    """
    tasks = {"decoder": "causal-lm", "encoder": "classification"}
    out: dict[str, tuple[str, ...]] = {}
    for t, s in FAMILIES.items():
        if fmt in s.exporters:
            out[tasks[s.kind]] = out.get(tasks[s.kind], ()) + (t,)
    return out


# -- resolving paths on a model ----------------------------------------------------------------------

def get_path(root: Any, path: str | None) -> Any:
    """``root.a.b.c`` for ``path="a.b.c"``; None when any step is missing or *path* is None."""
    if path is None:
        return None
    if path == "":
        return root
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def set_path(root: Any, path: str, value: Any) -> None:
    """Replace the module (or attribute) at dotted *path* below *root*."""
    parent, _, child = path.rpartition(".")
    setattr(get_path(root, parent) if parent else root, child, value)


def base_prefix(model: Any) -> str:
    """Dotted path of the HF base model inside *model* ("model", "bert", ...; "" when *model* is the base)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    return prefix if prefix and getattr(model, prefix, None) is not None else ""


def model_path(model: Any, spec: FamilySpec, which: str) -> str | None:
    """Top-level dotted path of ``blocks``, ``embed``, ``final_norm``, ``rotary`` (below the base model) or ``lm_head``."""
    rel = getattr(spec, which)
    if rel is None or which == "lm_head":
        return rel
    prefix = base_prefix(model)
    return f"{prefix}.{rel}" if prefix else rel


def find_blocks(model: Any) -> tuple[str, Any]:
    """(dotted path, ModuleList) of the model's repeated blocks, as its family's spec says.

    >>> path, blocks = find_blocks(llama)      # doctest: +SKIP
    >>> path, len(blocks)                      # doctest: +SKIP
    ('model.layers', 30)
    """
    from torch import nn

    spec = family_of(model)
    path = model_path(model, spec, "blocks")
    blocks = get_path(model, path)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise EdgeLLMError(f"{type(model).__name__} (model_type '{spec.model_type}') has no blocks at '{path}'",
                           "check the family's FamilySpec.blocks in edgellm/families.py")
    return path, blocks


def module(model: Any, which: str) -> Any:
    """The model's ``embed``, ``final_norm``, ``rotary`` or ``lm_head`` module (None when the family has none)."""
    return get_path(model, model_path(model, family_of(model), which))


def projection(block: Any, spec: FamilySpec, role: str) -> Any:
    """The module playing *role* (``"q"``, ``"down"``, ``"input_norm"`` ...) in *block*, or None.

    >>> projection(find_blocks(m)[1][0], family_of(m), "o")     # doctest: +SKIP
    Linear(in_features=576, out_features=576, bias=False)
    """
    return get_path(block, spec.role(role))


# -- the docs' support table ------------------------------------------------------------------------

MARK_BEGIN = "<!-- BEGIN GENERATED: python -m edgellm.families -->"
MARK_END = "<!-- END GENERATED -->"


def support_table() -> str:
    """The Markdown support table of every registered family (what ``docs/families.md`` holds)."""
    yes = lambda b: "yes" if b else "-"  # noqa: E731
    head = ("model_type", "kind", "blocks", "GGUF arch", "exporters", "runtimes", "AWQ folds", "structured",
            "pipeline", "notes")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in FAMILIES.values():
        arch = f"{s.gguf_arch}{' (Q/K permuted)' if s.rope_permute_qk else ''}" if s.gguf_arch else "-"
        cells = (f"`{s.model_type}`", s.kind, f"`{s.blocks}`", arch, ", ".join(s.exporters) or "-",
                 ", ".join(s.runtimes), str(len(s.awq_folds)) if s.awq_folds else "-", yes(s.structured),
                 yes(s.pipeline), s.notes or "")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def render_doc(text: str) -> str:
    """*text* with the part between the generated markers replaced by the current ``support_table``."""
    if MARK_BEGIN not in text or MARK_END not in text:
        raise EdgeLLMError("the document has no generated-table markers", f"add {MARK_BEGIN} ... {MARK_END}")
    before, rest = text.split(MARK_BEGIN, 1)
    _, after = rest.split(MARK_END, 1)
    return f"{before}{MARK_BEGIN}\n{support_table()}{MARK_END}{after}"


def main(argv: list[str] | None = None) -> int:
    """``python -m edgellm.families [--write docs/families.md]``: print the table, or refresh it in a file."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--write"] and len(args) == 2:
        from pathlib import Path

        path = Path(args[1])
        text = render_doc(path.read_text())
        with atomic_file(path) as f:
            f.write(text)
        return 0
    sys.stdout.write(support_table())
    return 0


__all__ = ["FamilySpec", "FAMILIES", "BLOCK_ROLES", "NORM_ROLES", "register", "unregister", "family_of", "require", "supporting",
           "export_support", "find_blocks", "projection", "module", "model_path", "get_path", "set_path",
           "support_table", "render_doc"]

if __name__ == "__main__":
    raise SystemExit(main())
