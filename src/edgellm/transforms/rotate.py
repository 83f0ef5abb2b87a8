"""``rotate``: fold the norm gains into the linears, then rotate the residual stream by a random orthogonal matrix.

This is the offline part of QuaRot / SpinQuant, for the families of ``edgellm.families`` whose
blocks are pre-norm RMSNorm decoders (Llama, Mistral, Qwen2, Qwen3, Gemma). The model computes the
same function (logits equal to ~1e-5 in fp32) but no weight sits on the grid it was shipped on, and
outliers are spread over every channel. Steps, all in float64 and stored back as float32:

1. Fold every RMSNorm gain ``g`` (``norm_offset + weight``, from the registry) into the linears that
   read the normed stream: input norm -> q/k/v, post-attention norm -> gate/up, final norm -> lm_head
   (``W <- W diag(g)``), and set the gain to 1. RMSNorm commutes with an orthogonal rotation only
   without a gain, which is why this comes first. A tied lm_head no longer equals the embedding
   after the fold, so it is untied (both are written; ``RotateResult.untied``).
2. With ``Q = diag(±1) H / √d`` (``transforms.hadamard.random_rotation``, seeded) the residual stream
   ``h`` becomes ``h Q``: embedding rows ``E <- E Q``; every linear reading the residual (q, k, v,
   gate, up, lm_head) ``W <- W Q``; every linear writing into it (o, down) ``W <- Qᵀ W``, ``b <- Qᵀ b``.
   Q/K norms (Qwen3) act per head on q and k, not on the residual, and stay as they are.
3. Check: the logits of the original and the rotated model on ``probe_tokens`` seeded random tokens
   must agree to ``tolerance`` (max abs difference), else nothing is returned.

Refused (``EdgeLLMError``): families that lack one of those roles, blocks with norms the registry does
not name (sandwich norms), norms that are not gain-only RMSNorms (LayerNorm's mean and bias do not
commute with a rotation; found by probing each norm), packed quantized models and sparse folders.
Deliberately left out: the online Hadamards of QuaRot (on the attention heads and before down_proj,
which need runtime kernels) and SpinQuant's learned rotations. The input model is never modified.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import EdgeLLMError
from ..families import FamilySpec, family_of, find_blocks, module, projection
from ..fileio import atomic_dir, write_manifest
from ..folders import folder_format
from ..modelfiles import cache_dir
from ..results import Result
from .hadamard import random_rotation

READERS = ("q", "k", "v", "gate", "up")           # read the normed residual stream
WRITERS = ("o", "down")                           # add into the residual stream
FOLDS = (("input_norm", ("q", "k", "v")), ("post_attention_norm", ("gate", "up")))


@dataclass(frozen=True)
class RotateConfig:
    """How to rotate: the seed of the random signs (and of any random factor), and the logit check.

    >>> RotateConfig(seed=3).probe_tokens
    64
    """

    seed: int = field(default=0, metadata={"help": "seed of the rotation's random signs"})
    probe_tokens: int = field(default=64, metadata={"help": "random tokens on which the logits are compared; 0: skip"})
    tolerance: float = field(default=1e-3, metadata={"help": "largest allowed max-abs logit difference on the probe"})

    def __post_init__(self):
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise EdgeLLMError(f"seed must be a non-negative integer (got {self.seed!r})", "e.g. --seed 0")
        if not isinstance(self.probe_tokens, int) or self.probe_tokens < 0:
            raise EdgeLLMError(f"probe_tokens must be >= 0 (got {self.probe_tokens!r})", "0 skips the logit check")
        if not self.tolerance > 0:
            raise EdgeLLMError(f"tolerance must be > 0 (got {self.tolerance!r})", "e.g. 1e-3")


@dataclass
class RotateResult(Result):
    """What ``rotate`` did, and the measured logit difference on the probe."""

    family: str
    hidden_size: int
    seed: int
    rotation: str                      # how Q was built (transforms.hadamard.random_rotation)
    orthogonality_error: float         # max |Q Qᵀ − I| in float64
    blocks: int
    folded_norms: int                  # gains folded into following linears (final norm included)
    untied: bool                       # the tied embedding / lm_head were written as two matrices
    probe_tokens: int
    max_logit_diff: float | None       # max |logits − original logits| on the probe (None: skipped)
    max_abs_logit: float | None
    seconds: float = 0.0


# -- checks -------------------------------------------------------------------------------------------

def _is_loaded(obj) -> bool:
    return hasattr(obj, "model") and hasattr(obj, "meta")


def check_rotatable(model, loaded=None) -> FamilySpec:
    """The model's family spec if ``rotate`` can fold and rotate it; else one-line ``EdgeLLMError``.

    >>> check_rotatable(edgellm.load("smollm2-135m").model).model_type      # doctest: +SKIP
    'llama'
    """
    fmt = ((getattr(getattr(loaded, "meta", None), "edgellm", None) or {}).get("format")
           or (folder_format(loaded) if loaded is not None else None)
           or ("quantized" if any(callable(getattr(m, "unpack", None)) for m in model.modules()) else None))
    if fmt in ("quantized", "sparse"):
        raise EdgeLLMError(f"the model is already {'quantized' if fmt == 'quantized' else 'pruned (a sparse folder)'}; "
                           "rotating it would undo that", "rotate the original float model, then quantize or prune")
    spec = family_of(model)
    need = ("embed", "final_norm", "lm_head", *READERS, *WRITERS, "input_norm", "post_attention_norm")
    missing = [r for r in need if getattr(spec, r) is None]
    if spec.kind != "decoder" or missing:
        why = "not a decoder" if spec.kind != "decoder" else f"no {', '.join(missing)} role"
        raise EdgeLLMError(f"cannot rotate model_type '{spec.model_type}': its norms cannot be folded ({why} in the "
                           "family registry)", "rotate needs a pre-norm RMSNorm decoder: llama, mistral, qwen2, qwen3")
    if module(model, "lm_head") is None or module(model, "embed") is None or module(model, "final_norm") is None:
        raise EdgeLLMError(f"{type(model).__name__} has no embedding, final norm or lm_head where the registry says",
                           "rotate a causal LM (AutoModelForCausalLM), not a base model")
    known = {id(module(model, "final_norm"))}
    for block in find_blocks(model)[1]:
        known |= {id(projection(block, spec, r)) for r in ("input_norm", "post_attention_norm", "q_norm", "k_norm")}
    extra = [n for n, m in model.named_modules() if "norm" in type(m).__name__.lower() and id(m) not in known]
    if extra:
        raise EdgeLLMError(f"cannot rotate model_type '{spec.model_type}': its norms cannot be folded ({extra[0]} "
                           "is a norm the family registry does not name)", "rotate supports pre-norm blocks only")
    return spec


def _unit_gain(norm: nn.Module, offset: float, Q32: torch.Tensor, what: str) -> torch.Tensor:
    """Set *norm*'s gain to 1 and return the old gain (float64), after probing that it is a gain-only RMSNorm."""
    w = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    d = Q32.shape[0]
    if not isinstance(w, torch.Tensor) or w.shape != (d,) or isinstance(bias, torch.Tensor):
        raise EdgeLLMError(f"cannot rotate: the norm at {what} ({type(norm).__name__}) is not a gain-only RMSNorm, so its "
                           "norms cannot be folded", "rotate supports RMSNorm families (llama, mistral, qwen2, qwen3)")
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(0)) * 3 + 0.5
    gain = w.detach().double() + offset
    y_ref = norm(x)
    w.data.fill_(1.0 - offset)
    y_unit = norm(x)
    scale = float(y_ref.abs().max()) + 1e-6
    ok = (float((y_unit * gain.float() - y_ref).abs().max()) <= 1e-4 * scale
          and float((norm(x @ Q32) - y_unit @ Q32).abs().max()) <= 1e-4 * float(y_unit.abs().max() + 1e-6))
    if not ok:
        raise EdgeLLMError(f"cannot rotate: the norm at {what} ({type(norm).__name__}) does not scale by "
                           f"{'1 + ' if offset else ''}its weight or does not commute with a rotation (mean "
                           "subtraction?), so its norms cannot be folded", "rotate supports gain-only RMSNorm families")
    return gain


# -- the transform -----------------------------------------------------------------------------------

def _set(t: torch.Tensor, value: torch.Tensor) -> None:
    t.data.copy_(value.to(t.dtype))


@torch.no_grad()
def fold_and_rotate(model: nn.Module, Q: torch.Tensor, spec: FamilySpec | None = None) -> dict:
    """Fold the norm gains into the following linears and rotate the residual stream by *Q* (float64), in place.

    Returns ``{"blocks", "folded_norms", "untied"}``. *model* must pass ``check_rotatable``.

    >>> Q, _ = random_rotation(96, seed=0)
    >>> fold_and_rotate(tiny_llama_model, Q)["untied"]          # doctest: +SKIP
    True
    """
    spec = spec or family_of(model)
    offset = float(getattr(spec, "norm_offset", 0.0))
    Q = Q.double()
    Q32 = Q.float()
    embed, head, final = module(model, "embed"), module(model, "lm_head"), module(model, "final_norm")
    untied = head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr()
    if untied:
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        for sub in ("text_config", "decoder"):
            if hasattr(getattr(model.config, sub, None), "tie_word_embeddings"):
                getattr(model.config, sub).tie_word_embeddings = False
    _, blocks = find_blocks(model)
    folded = 0
    for i, block in enumerate(blocks):
        for norm_role, readers in FOLDS:
            g = _unit_gain(projection(block, spec, norm_role), offset, Q32, f"block {i} {norm_role}")
            folded += 1
            for r in readers:
                lin = projection(block, spec, r)
                _set(lin.weight, (lin.weight.double() * g[None, :]) @ Q)
        for r in WRITERS:
            lin = projection(block, spec, r)
            _set(lin.weight, Q.T @ lin.weight.double())
            if getattr(lin, "bias", None) is not None:
                _set(lin.bias, Q.T @ lin.bias.double())
    g = _unit_gain(final, offset, Q32, "the final norm")
    _set(head.weight, (head.weight.double() * g[None, :]) @ Q)
    _set(embed.weight, embed.weight.double() @ Q)
    return {"blocks": len(blocks), "folded_norms": folded + 1, "untied": bool(untied)}


def _probe_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def rotate(model, config: RotateConfig | None = None):
    """A rotated copy of *model* (a ``Loaded`` record or an ``nn.Module``): ``(rotated, RotateResult)``.

    The input is left as it was; the copy is float32, computes the same logits, and saves as a plain
    HF folder (``edgellm.save``). See the module docstring for what is folded and rotated.

    >>> m, r = edgellm.rotate(edgellm.load("smollm2-135m"), RotateConfig(seed=0))   # doctest: +SKIP
    >>> r.rotation, r.max_logit_diff < 1e-3                                           # doctest: +SKIP
    ('random signs x sylvester 16 x paley-II 36 (q=17) / sqrt(576)', True)
    """
    if config is not None and not isinstance(config, RotateConfig):
        raise EdgeLLMError(f"config must be a RotateConfig (got {type(config).__name__})", "use RotateConfig(...)")
    cfg = config or RotateConfig()
    loaded = model if _is_loaded(model) else None
    src = loaded.model if loaded is not None else model
    if not isinstance(src, nn.Module):
        raise EdgeLLMError(f"cannot rotate a {type(src).__name__}", "pass edgellm.load(...) or an nn.Module")
    if next(src.parameters()).device.type == "meta" or getattr(src, "hf_device_map", None):
        raise EdgeLLMError("cannot rotate a model placed across devices or offloaded", "load it without max_memory")
    spec = check_rotatable(src, loaded)
    t0 = time.perf_counter()
    d = module(src, "embed").weight.shape[1]
    Q, how = random_rotation(d, cfg.seed)
    ortho = float((Q @ Q.T - torch.eye(d, dtype=Q.dtype)).abs().max())
    n_probe = min(cfg.probe_tokens, getattr(src.config, "max_position_embeddings", None) or cfg.probe_tokens)
    ids = torch.randint(0, module(src, "embed").weight.shape[0], (1, n_probe),
                        generator=torch.Generator().manual_seed(cfg.seed))
    was_training = src.training
    src.eval()
    before = _probe_logits(src, ids).clone() if n_probe else None
    new = copy.deepcopy(src).float().eval()
    src.train(was_training)
    done = fold_and_rotate(new, Q, spec)
    diff = top = None
    if n_probe:
        after = _probe_logits(new, ids)
        diff, top = float((after - before).abs().max()), float(before.abs().max())
        if not diff <= cfg.tolerance:
            raise EdgeLLMError(f"the rotated model's logits differ from the original's by {diff:.3g} "
                               f"(> tolerance {cfg.tolerance:g}); nothing was returned",
                               "report this as a bug, with the model's family")
    result = RotateResult(family=spec.model_type, hidden_size=d, seed=cfg.seed, rotation=how,
                          orthogonality_error=ortho, probe_tokens=n_probe, max_logit_diff=diff, max_abs_logit=top,
                          seconds=time.perf_counter() - t0, **done)
    if loaded is None:
        return new, result
    params = list(new.parameters())
    meta = dataclasses.replace(
        loaded.meta, dtype="float32", n_params=sum(p.numel() for p in params),
        param_bytes=sum(p.numel() * p.element_size() for p in params) + sum(
            b.numel() * b.element_size() for b in new.buffers()),
        edgellm={"rotation": provenance(result)},
        origin=(loaded.meta.origin + "; " if getattr(loaded.meta, "origin", "") else "") + f"rotated ({how})")
    return dataclasses.replace(loaded, model=new, meta=meta), result


def provenance(result: RotateResult) -> dict:
    """What a rotated folder's ``config.json["edgellm"]["rotation"]`` records (``edgellm.save(..., edgellm_section=)``)."""
    return {k: getattr(result, k) for k in ("seed", "rotation", "untied", "max_logit_diff", "probe_tokens")}


ROTATED_CACHE_VERSION = 1     # bump when the transform changes: cached rotated built-ins are rebuilt


def rotated_folder(src, out, seed: int = 0, *, force: bool = False, own: bool = False):
    """Rotate the plain fp32 HF causal-LM folder *src* into the folder *out* (atomic; with manifest); returns *out*.

    >>> rotated_folder(Path("smollm2-fp32"), Path("smollm2-rotated"), seed=0)     # doctest: +SKIP
    PosixPath('smollm2-rotated')
    """
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    new, result = rotate(model, RotateConfig(seed=seed))
    new.config.edgellm = {"rotation": provenance(result)}
    with atomic_dir(out, force=force, own=own, inputs=(src,)) as tmp:
        new.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        write_manifest(tmp)
    return Path(out)


def rotated_cache_folder(src, seed: int = 0):
    """The folder *src* rotated with *seed*, built once into ``cache_dir()/rotated`` (a built-in's ``rotate_seed``).

    What ``edgellm.load("smollm2-135m-rotated")`` reads: SmolLM2's fp32 cache folder, rotated with seed 0.

    >>> rotated_cache_folder(gguf_cache_folder(builtin_path("smollm2-135m")), 0).parent.name   # doctest: +SKIP
    'rotated'
    """
    from pathlib import Path

    src = Path(src)
    folder = cache_dir() / "rotated" / f"{src.name}-seed{seed}-v{ROTATED_CACHE_VERSION}"
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    return rotated_folder(src, folder, seed, force=True, own=True)


__all__ = ["RotateConfig", "RotateResult", "rotate", "check_rotatable", "fold_and_rotate", "provenance",
           "rotated_folder", "rotated_cache_folder"]
