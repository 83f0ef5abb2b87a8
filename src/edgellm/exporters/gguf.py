"""Export a causal LM to a GGUF file for llama.cpp, following ``convert_hf_to_gguf.py``.

Supported: the families whose ``FamilySpec`` (``families.py``) lists ``gguf``: today ``llama`` and
``mistral`` (GGUF arch ``llama``, with the Q/K row permutation llama.cpp's interleaved rotary
expects), ``qwen2`` (Q/K/V biases), ``qwen3`` (per-head Q/K RMSNorm weights, head_dim not tied
to hidden / heads) and ``gemma`` (norms written as ``1 + w``, as its ``norm_offset`` says and
llama.cpp's converter does; llama.cpp scales the embedding by √hidden itself; always tied). Each tensor's GGUF name comes from the role the family's spec gives its module
(q, k, ..., input_norm; embed, final_norm, lm_head) and gguf-py's ``TENSOR_NAMES`` (``gguf_names``), so no HF
attribute path is spelled here; metadata uses the same keys as llama.cpp's converter; the tokenizer is embedded as a byte-level BPE ("gpt2" model: tokens, token types,
merges, pre-tokenizer name, special ids, add-BOS/EOS flags) with the chat template.

Weight types (``gguf_type``): f32, f16 and the quantized types of ``gguf_types`` (q8_0, q4_0, q4_1,
q5_0, q5_1, iq4_nl, q2_k ... q6_k). Norms and biases stay f32. For the quantized types the token
embedding (which is also the output head when tied) is q8_0 unless ``embedding_type`` says
otherwise, as llama.cpp does when Q6_K cannot tile a row. A tensor whose rows the type cannot
tile gets llama.cpp's fallback type (``gguf_types.fallback``: q4_k -> q5_0, ...), listed in the
report's ``fallbacks``; a type that no tensor of the model can take is an error. ``tensor_types``
pins single tensors' types; a budget (``target_bpw``/``max_bytes``) has ``gguf_mix`` choose them all.
edgellm's packed linears (modules with ``unpack()``) go in **as they are** when their grid is
the block's grid (see ``gguf_blocks.from_quantized``); a packed weight on another grid is an
error unless ``requantize=True``, and then every such tensor is listed in the report. Plain
float weights are quantized with ggml's reference round-to-nearest, bit-exact with llama.cpp, or,
with ``quantizer="gptq"``, the block linears are GPTQ'd onto each one's type (``gguf_gptq``:
optionally after AWQ's prescale, calibrated on ``calib``, a budgeted mix's types allocated first)
and their codes written as they are; the embedding / output head keep RTN.

The file is written to a temporary ``.gguf`` next to *out*, verified (when a verifier is
given) against a PyTorch copy holding exactly the written weights, and renamed into place
only then. The tokenizer metadata comes from ``gguf_tokenizer``. Deliberately absent: SentencePiece tokenizers, rope scaling
(llama3/yarn), mixture-of-experts and multimodal models.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..calibconfig import CalibConfig, config_field
from ..errors import EdgeLLMError
from ..families import NORM_ROLES
from ..fileio import check_writable_target, temp_prefix
from . import gguf_gptq, gguf_mix
from .gguf_blocks import GridMismatch, dequantize_codes, permute_qk, unpermute_qk
from .gguf_types import TYPES as QTYPES
from .gguf_types import block_of, fallback, from_quantized, pack, rtn
from .gguf_names import (BLOCK_TENSORS, MODEL_TENSORS, file_provenance, file_types, gguf_arch, gguf_family,  # noqa: F401
                         layout_of, rope_theta, tensor_names)
from .gguf_tokenizer import tokenizer_metadata

GGUF_TYPES = ("f32", "f16") + QTYPES
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10,   # llama_ftype
             "q3_k": 11, "q4_k": 14, "q5_k": 16, "q6_k": 18, "iq4_nl": 25}    # (K: the _S presets, all one type)


@dataclass(frozen=True)
class GGUFExportConfig:
    """*gguf_type* for the 2-D weights; *embedding_type* for the token embedding / output head
    (default: q8_0 for 8/4-bit files, else *gguf_type*); *requantize* allows re-encoding edgellm
    weights whose grid is not the block's (reported per tensor); *tensor_types* pins HF tensors' types
    (a mapping or ``NAME=TYPE`` strings); *target_bpw* or *max_bytes* (whole file) asks for a mix
    from *ladder* chosen on *calib* by ``gguf_mix`` (see docs/gguf.md, Mixed precision).

    >>> GGUFExportConfig(gguf_type="q4_0").embedding
    'q8_0'
    """

    gguf_type: str = "f16"
    embedding_type: str | None = None
    requantize: bool = False
    tensor_types: tuple[str, ...] = config_field((), "HF_TENSOR=TYPE: that tensor's type (repeatable)", metavar="NAME=TYPE")
    target_bpw: float | None = config_field(None, "mix: each tensor's type from --ladder, measured on --calib-*, so the "
                                            "whole file has at most this many bits per weight")
    max_bytes: int | str | None = config_field(None, "mix: as --target-bpw, a byte budget for the whole file (e.g. 100MB)")
    ladder: tuple[str, ...] = config_field(gguf_mix.DEFAULT_LADDER, "types a budgeted mix chooses from (repeatable)")
    sensitivity: str = config_field("hessian", "mix: how a tensor's error becomes a predicted loss: hessian (each "
                                    "layer's output MSE) or fisher (weighted by the loss's gradient there; one more "
                                    "backward pass per window)", choices=gguf_mix.SENSITIVITIES)
    quantizer: str = config_field("rtn", "rtn: round-to-nearest from the float weights; gptq: GPTQ onto each tensor's "
                                  "type, calibrated on --calib-* (block linears, and a head below 8 bits)",
                                  choices=("rtn", "gptq"))
    awq_prescale: bool = config_field(False, "with --quantizer gptq: AWQ's per-channel prescale (searched on the type's "
                                      "grid, folded into the norms) before GPTQ")
    layout_of: str | None = config_field(None, "every weight's type as in this GGUF of the same model (e.g. llama.cpp's "
                                         "Q4_K_M): its preset's layout with edgellm's codes; --tensor-type pins win",
                                         metavar="FILE.gguf")
    calib: CalibConfig = field(default_factory=CalibConfig)

    def __post_init__(self):
        for v in (self.gguf_type, self.embedding_type):
            if v is not None and v not in GGUF_TYPES:
                raise EdgeLLMError(f"unknown GGUF type '{v}'", f"use one of: {', '.join(GGUF_TYPES)}")
        if self.quantizer not in ("rtn", "gptq"):
            raise EdgeLLMError(f"unknown GGUF quantizer '{self.quantizer}'", "use --quantizer rtn or gptq")
        if self.awq_prescale and self.quantizer != "gptq":
            raise EdgeLLMError("--awq-prescale is a step of --quantizer gptq", "add --quantizer gptq, or drop --awq-prescale")
        gguf_mix.normalize_fields(self)

    @property
    def embedding(self) -> str:
        return self.embedding_type or ("q8_0" if self.gguf_type in QTYPES else self.gguf_type)


@dataclass
class GGUFTensorPlan:
    """What goes into the file for one tensor, and the fp32 weights llama.cpp will see."""

    name: str
    gguf_type: str
    data: np.ndarray                 # float32/float16 array, or uint8 blocks [rows, bytes]
    weights: torch.Tensor            # what llama.cpp reconstructs (HF layout, for the reference model)
    how: str                         # "float", "exact" (our codes), "rtn", "gptq", "requantized", "dequantized"
    requested: str | None = None     # the type asked for, when its rows forced llama.cpp's fallback type


@dataclass
class GGUFExportReport:
    path: str
    gguf_type: str
    embedding_type: str
    architecture: str
    file_bytes: int
    tensor_types: dict = field(default_factory=dict)     # gguf type -> count
    how: dict = field(default_factory=dict)              # how -> count
    requantized: list = field(default_factory=list)
    fallbacks: dict = field(default_factory=dict)        # tensor -> "q4_k -> q5_0" (rows the type cannot tile)
    mix: dict | None = None                              # a budgeted mix: gguf_mix.MixPlan.to_dict()
    quantizer: str = "rtn"
    gptq: dict | None = None                             # --quantizer gptq: seconds, tensors, calibration tokens, prescale
    seconds: float = 0.0
    verification: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def source_tensors(model) -> dict:
    """HF tensor name -> fp32 tensor, or the ``QuantizedWeight`` of a packed edgellm linear."""
    packed = {n: m for n, m in model.named_modules() if n and callable(getattr(m, "unpack", None))}
    out = {}
    for name, t in model.state_dict().items():
        if any(name.startswith(p + ".") for p in packed):
            continue
        out[name] = t
    for name, mod in packed.items():
        out[name + ".weight"] = mod.unpack()
        if getattr(mod, "bias", None) is not None:
            out[name + ".bias"] = mod.bias.detach()
    return out


def _encode(name: str, src, qtype: str, requantize: bool, permute_heads: int | None, codes=None) -> GGUFTensorPlan:
    """One tensor: float -> float/RTN blocks; QuantizedWeight -> exact blocks, or an explicit requantization;
    *codes* (a ``TypeCodes`` from ``gguf_gptq``) -> those codes as they are."""
    if codes is not None:
        if codes.qtype != qtype:
            raise EdgeLLMError(f"tensor '{name}': GPTQ codes are {codes.qtype}, the file asks for {qtype}",
                               "report this: the quantizer and the writer disagree on the type")
        tc = codes.rows(lambda t: permute_qk(t, permute_heads)) if permute_heads else codes
        return GGUFTensorPlan(name, qtype, pack(tc), tc.dequantize(), "gptq")
    quantized = not isinstance(src, torch.Tensor)
    if not quantized and (src.dim() != 2 or qtype in ("f32", "f16")) or quantized and qtype in ("f32", "f16"):
        W = dequantize_codes(src) if quantized else src.detach().float()
        if permute_heads:
            W = permute_qk(W, permute_heads)
        t = qtype if W.dim() == 2 else "f32"
        arr = W.numpy().astype(np.float16 if t == "f16" else np.float32)
        w = torch.from_numpy(arr.astype(np.float32))
        return GGUFTensorPlan(name, t, arr, w, "dequantized" if quantized else "float")
    how = "rtn"
    if quantized:
        try:
            bc = from_quantized(src, qtype)
            how = "exact"
        except GridMismatch as e:
            if not requantize:
                raise EdgeLLMError(f"tensor '{name}' cannot be written as {qtype} without re-quantizing it: {e}",
                                   f"export as the matching type, or pass --requantize to re-encode it with round-to-nearest") from e
            bc, how = rtn(dequantize_codes(src), qtype), "requantized"
    else:
        try:
            bc = rtn(src.detach().float(), qtype)
        except GridMismatch as e:
            raise EdgeLLMError(f"tensor '{name}' cannot be stored as {qtype}: {e}", "use --gguf-type f16 or f32") from e
    if permute_heads:   # a row permutation: codes and per-block scales move with their rows
        bc = bc.rows(lambda t: permute_qk(t, permute_heads))
    return GGUFTensorPlan(name, qtype, pack(bc), bc.dequantize(), how)


def plan_tensors(model, cfg: GGUFExportConfig, codes: dict | None = None) -> tuple[list[GGUFTensorPlan], dict]:
    """Every tensor of *model* mapped to its GGUF name, type and bytes; plus HF name -> plan.
    *codes* (HF name -> ``TypeCodes``) are written as they are (GPTQ's, ``gguf_gptq``)."""
    spec = gguf_family(model)
    c = model.config
    names = tensor_names(model, spec)
    n_head, n_kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    plans, by_hf, pinned = [], {}, gguf_mix.type_map(cfg)
    for hf_name, src in source_tensors(model).items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and getattr(c, "tie_word_embeddings", False):
            continue
        mod, _, suffix = hf_name.rpartition(".")
        if mod not in names or suffix not in ("weight", "bias"):
            raise EdgeLLMError(f"tensor '{hf_name}' has no GGUF name for arch '{spec.gguf_arch}'",
                               f"GGUF export writes the modules FamilySpec('{spec.model_type}') names, no extra ones")
        name, role = names[mod][0] + "." + suffix, names[mod][1]
        heads = {"q": n_head, "k": n_kv}.get(role) if spec.rope_permute_qk else None
        offset = spec.norm_offset if role in NORM_ROLES and suffix == "weight" else 0.0   # llama.cpp stores 1 + w
        is_emb = name in ("token_embd.weight", "output.weight")
        qtype = asked = pinned.get(hf_name) or (cfg.embedding if is_emb else cfg.gguf_type)
        shape = (src if isinstance(src, torch.Tensor) else src.codes).shape
        if len(shape) == 2:                 # llama.cpp's convert_incompatible_tensor: rows the type cannot tile
            qtype = fallback(asked, shape[1])
        plan = _encode(name, src + offset if offset else src, qtype, cfg.requantize, heads, (codes or {}).get(hf_name))
        plan.requested = asked if qtype != asked else None
        if heads:   # keep the reference model in HF layout: undo the permutation on the reconstructed weights
            plan.weights = unpermute_qk(plan.weights, heads)
        if offset:
            plan.weights = plan.weights - offset
        plans.append(plan)
        by_hf[hf_name] = plan
    t = cfg.gguf_type
    if t in QTYPES and not any(p.gguf_type == t for p in plans):
        raise EdgeLLMError(f"no weight of this model has rows that {t} can tile (a multiple of {block_of(t)})",
                           f"use --gguf-type {fallback(t, 32) if fallback(t, 32) != t else 'f16'} (llama.cpp's fallback) or f16")
    return plans, by_hf


def reference_model(model, by_hf: dict):
    """A plain fp32 copy of *model* holding exactly the weights written to the GGUF (for verification).

    edgellm's packed linears become ``nn.Linear``s; every mapped tensor gets the weights llama.cpp sees.
    """
    ref = copy.deepcopy(model).float()
    for name, mod in [(n, m) for n, m in ref.named_modules() if n and callable(getattr(m, "unpack", None))]:
        W = by_hf[name + ".weight"].weights                          # W: [out, in]
        lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=getattr(mod, "bias", None) is not None)
        parent, _, child = name.rpartition(".")
        setattr(ref.get_submodule(parent) if parent else ref, child, lin)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for hf_name, plan in by_hf.items():
            if hf_name in params:
                params[hf_name].copy_(plan.weights.view(params[hf_name].shape))
    return ref.eval()


# -- writing ------------------------------------------------------------------------------------
def write_gguf(path: Path, model, tok, plans: list[GGUFTensorPlan], cfg: GGUFExportConfig, name: str,
               provenance: dict) -> None:
    import gguf

    arch = gguf_arch(model)
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type("model")
    w.add_name(name)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    w.add_rope_freq_base(rope_theta(c))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(head_dim)
    if head_dim != c.hidden_size // c.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(FILE_TYPE[cfg.gguf_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tm = tokenizer_metadata(tok, c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tm["pre"])
    w.add_token_list(tm["tokens"])
    w.add_token_types(tm["types"])
    w.add_token_merges(tm["merges"])
    for k, v in tm["special"].items():
        getattr(w, f"add_{k}_token_id")(int(v))
    w.add_add_bos_token(tm["add_bos"])
    w.add_add_eos_token(tm["add_eos"])
    if tm["chat_template"]:
        w.add_chat_template(tm["chat_template"])
    # compact, without empty or off fields: the metadata's bytes count against a file-size budget (a
    # reference's size; tensor data is 32-byte aligned, so a few bytes can cost 32)
    kept = {k: v for k, v in provenance.items() if v not in (None, False, {}, [])}
    w.add_string("edgellm.export", json.dumps(kept, sort_keys=True, separators=(",", ":")))
    for p in plans:
        raw = None if p.gguf_type in ("f32", "f16") else gguf.GGMLQuantizationType[p.gguf_type.upper()]
        w.add_tensor(p.name, p.data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def export_gguf(model, out, *, force: bool = False, verify=None, **options) -> Path:
    """Export *model* (a spec or ``Loaded``) to the GGUF file *out*; *options* are ``GGUFExportConfig`` fields.

    *verify*, when given, is called as ``verify(tmp_gguf, reference_loaded)`` before the file is
    renamed into place (the reference holds exactly the written weights); if it raises, nothing
    is left behind. ``export_gguf_report`` also returns the export report.

    >>> export_gguf("smollm2-135m", "out/smollm2-q4_0.gguf", gguf_type="q4_0")   # doctest: +SKIP
    PosixPath('out/smollm2-q4_0.gguf')
    """
    return export_gguf_report(model, out, force=force, verify=verify, **options)[0]


def export_gguf_report(model, out, *, force: bool = False, verify=None, progress: bool = False,
                       **options) -> tuple[Path, GGUFExportReport]:
    """``export_gguf`` that also returns the ``GGUFExportReport`` (types, exact/requantized tensors, a budgeted
    mix's per-tensor types and predicted loss, verification)."""
    from ..models import Loaded, load

    t0 = time.perf_counter()
    cfg = GGUFExportConfig(**options)
    loaded = model if isinstance(model, Loaded) else load(model)
    arch = gguf_arch(loaded.model)
    if loaded.tokenizer is None:
        raise EdgeLLMError("the model has no tokenizer to embed in the GGUF", "export a folder with a tokenizer")
    out = check_writable_target(out, force, inputs=(loaded.meta.source, *([cfg.layout_of] if cfg.layout_of else [])))
    if out.suffix != ".gguf":
        raise EdgeLLMError(f"GGUF output '{out}' should end in .gguf", "use --out NAME.gguf")
    if cfg.layout_of:                         # the file's types, under the explicit pins
        layout = {**layout_of(cfg.layout_of, loaded.model), **gguf_mix.type_map(cfg)}
        cfg = replace(cfg, tensor_types=tuple(f"{k}={v}" for k, v in layout.items()))
    mix = gguf_mix.plan_mix(loaded, cfg, names=tensor_names(loaded.model, gguf_family(loaded.model)), write=write_gguf,
                            progress=progress) if gguf_mix.budgeted(cfg) else None     # every tensor's type first
    cfg = mix.config if mix else cfg
    model, codes, gptq = loaded.model, None, None
    if cfg.quantizer == "gptq":               # on a copy: GPTQ (and AWQ's folds) change weights and norms
        model, codes, gptq = gguf_gptq.quantize_model(loaded, cfg, progress=progress)
    with torch.no_grad():
        plans, by_hf = plan_tensors(model, cfg, codes)
    report = GGUFExportReport(path=str(out), gguf_type=cfg.gguf_type, embedding_type=cfg.embedding, architecture=arch,
                              file_bytes=0, requantized=[p.name for p in plans if p.how == "requantized"],
                              fallbacks={p.name: f"{p.requested} -> {p.gguf_type}" for p in plans if p.requested},
                              mix=mix.to_dict() if mix else None, quantizer=cfg.quantizer, gptq=gptq)
    for p in plans:
        report.tensor_types[p.gguf_type] = report.tensor_types.get(p.gguf_type, 0) + 1
        report.how[p.how] = report.how.get(p.how, 0) + 1
    provenance = file_provenance(loaded, cfg, report.requantized, report.fallbacks)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(out), suffix=".gguf", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)             # mkstemp makes 0600; the artifact is an ordinary file
    try:
        write_gguf(tmp, loaded.model, loaded.tokenizer, plans, cfg, loaded.meta.name, provenance)
        gguf_mix.check_size(mix, tmp)
        if verify is not None:
            exact = all(p.how in ("float", "exact") for p in plans) and cfg.gguf_type == "f32" and cfg.embedding == "f32"
            ref_model = loaded.model if exact and not any(callable(getattr(m, "unpack", None)) for m in loaded.model.modules()) \
                else reference_model(model, by_hf)
            del plans
            ref = Loaded(ref_model, loaded.tokenizer, loaded.meta)
            report.verification = verify(tmp, ref, source=None if ref_model is loaded.model else loaded)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    report.file_bytes = out.stat().st_size
    report.seconds = time.perf_counter() - t0
    return out, report


def verify_tolerance(**options) -> str:
    """The named verification tolerance for a GGUF written from ``GGUFExportConfig(**options)`` (``verify.TOLERANCES``).

    llama.cpp multiplies quantized weights with activations quantized to 8 bits, and F16 weights
    with fp16 activations; only an all-F32 file is compared at fp32 tolerance. A mix takes its
    loosest member type's tolerance.
    """
    cfg = GGUFExportConfig(**options)
    types = gguf_mix.member_types(cfg) | ({t for t, _ in file_types(cfg.layout_of).values()} if cfg.layout_of else set())
    if types & set(QTYPES):
        return "int8-act"
    return "f16" if "f16" in types else "f32"
