"""GGUF tensor names and architecture of a model, from the family registry and gguf-py's names.

``tensor_names`` maps each HF module to its GGUF tensor name through the role its family's
``FamilySpec`` gives it (q, k, ..., input_norm; embed, final_norm, lm_head), checked against
llama.cpp's list for that architecture, so no HF attribute path is spelled here. The writer
(``gguf.py``), the budgeted mixes (``gguf_mix.py``) and llama.cpp's quantizer wrapper use it.
"""

from __future__ import annotations

import gguf

from ..errors import EdgeLLMError
from ..families import FamilySpec, find_blocks, model_path, require

# family role -> gguf-py MODEL_TENSOR (block roles get ``bid``)
BLOCK_TENSORS = {"q": "ATTN_Q", "k": "ATTN_K", "v": "ATTN_V", "o": "ATTN_OUT", "gate": "FFN_GATE", "up": "FFN_UP",
                 "down": "FFN_DOWN", "input_norm": "ATTN_NORM", "post_attention_norm": "FFN_NORM",
                 "q_norm": "ATTN_Q_NORM", "k_norm": "ATTN_K_NORM"}
MODEL_TENSORS = {"embed": "TOKEN_EMBD", "final_norm": "OUTPUT_NORM", "lm_head": "OUTPUT"}


def gguf_family(model) -> FamilySpec:
    """The family of a causal LM that GGUF export supports; EdgeLLMError naming the supported ones otherwise."""
    spec = require(model, "gguf", "GGUF export")
    if not type(model).__name__.endswith("ForCausalLM"):
        raise EdgeLLMError(f"GGUF export does not support {type(model).__name__} (not a causal LM)",
                           f"export the {spec.model_type} ...ForCausalLM model")
    return spec


def gguf_arch(model) -> str:
    """llama.cpp's architecture name for *model* (``families.FamilySpec.gguf_arch``)."""
    return gguf_family(model).gguf_arch


def tensor_names(model, spec: FamilySpec) -> dict[str, tuple[str, str]]:
    """HF module path -> (GGUF tensor name without suffix, role), from the family's roles and gguf-py's names.

    >>> tensor_names(llama, family_of(llama))["model.layers.0.self_attn.q_proj"]   # doctest: +SKIP
    ('blk.0.attn_q', 'q')
    """
    known = set(gguf.MODEL_TENSORS[gguf.MODEL_ARCH[spec.gguf_arch.upper()]])

    def name(role: str, kind: str, **fmt) -> str:
        t = gguf.MODEL_TENSOR[kind]
        if t not in known:
            raise EdgeLLMError(f"llama.cpp's '{spec.gguf_arch}' architecture has no {kind} tensor ({role})",
                               f"fix FamilySpec('{spec.model_type}').gguf_arch or its {role} role")
        return gguf.TENSOR_NAMES[t].format(**fmt)

    tied = bool(getattr(model.config, "tie_word_embeddings", False))     # a tied head is not written
    out = {model_path(model, spec, w): (name(w, kind), w) for w, kind in MODEL_TENSORS.items()
           if model_path(model, spec, w) and not (tied and w == "lm_head")}
    path, blocks = find_blocks(model)
    for i in range(len(blocks)):
        for role, kind in BLOCK_TENSORS.items():
            if spec.role(role):
                out[f"{path}.{i}.{spec.role(role)}"] = (name(role, kind, bid=i), role)
    return out


def rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    scaling = getattr(cfg, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise EdgeLLMError(f"GGUF export does not support rope scaling '{rope_type}'", "export a model with default rotary")
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise EdgeLLMError("the model config has no rope_theta", "check the config")
    return float(theta)


def file_types(path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GGUF tensor name -> (lower-case GGML type name, shape in HF order) of every tensor in the file at *path*."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise EdgeLLMError(f"cannot read the GGUF file '{path}': {e}", "pass a GGUF file that llama.cpp loads") from e
    return {t.name: (t.tensor_type.name.lower(), tuple(int(n) for n in reversed(t.shape.tolist()))) for t in reader.tensors}


def layout_of(path, model) -> dict[str, str]:
    """HF weight name -> GGUF type, for every 2-D weight of *model*, read from a GGUF file of the same model
    (for example llama.cpp's Q4_K_M of it): the per-tensor layout that file's preset chose, so that edgellm can
    write the same types with its own codes. A weight the file lacks, or holds at another shape, is an error."""
    from .gguf_types import TYPES

    spec = gguf_family(model)
    have = file_types(path)
    out = {}
    for mod, (name, _) in tensor_names(model, spec).items():
        w = model.get_submodule(mod).weight
        if w.dim() != 2:
            continue
        if name + ".weight" not in have:
            raise EdgeLLMError(f"'{path}' has no tensor {name}.weight: it is not a GGUF of this model",
                               "pass a GGUF converted from the same model (same architecture and sizes)")
        qtype, shape = have[name + ".weight"]
        if shape != tuple(w.shape):
            raise EdgeLLMError(f"'{path}' holds {name}.weight at {list(shape)}, the model at {list(w.shape)}",
                               "pass a GGUF converted from the same model (same architecture and sizes)")
        if qtype not in TYPES + ("f32", "f16"):
            raise EdgeLLMError(f"'{path}' stores {name}.weight as {qtype.upper()}, which edgellm cannot write",
                               f"use a file whose weights are among: {', '.join(TYPES + ('f32', 'f16'))}")
        out[mod + ".weight"] = qtype
    return out


def file_provenance(loaded, cfg, requantized: list, fallbacks: dict) -> dict:
    """The ``edgellm.export`` metadata: only what the file's other headers do not say already.

    Its bytes count against a file-size budget (a reference's size; tensor data is 32-byte aligned, so a few
    bytes can cost 32). The main type is ``general.file_type``; every tensor's type (and so the embedding's,
    the per-tensor "how" and the layout a ``layout_of`` file was copied from) is in its tensor info; all of
    them stay in the export report. AWQ's prescale is folded into the quantizer's name.
    """
    quantizer = cfg.quantizer + ("+awq" if cfg.awq_prescale and cfg.quantizer == "gptq" else "")
    return {"source": loaded.meta.name, "quantizer": quantizer, "requantized": requantized, "fallbacks": fallbacks,
            "source_edgellm": loaded.meta.edgellm or {}}
