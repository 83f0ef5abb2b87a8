"""Per-tensor mixed precision for one GGUF under a budget: sensitivity per tensor and type, then allocation.

**Sensitivity.** For every tensor and candidate type ``t``, the predicted loss of writing it as ``t``
(``gguf_sensitivity``: the layer's output MSE on the calibration inputs, from one calibration pass
that leaves the model unchanged, or with ``sensitivity="fisher"`` that error weighted per output channel
by the loss's own curvature, in the loss's units). Norms and biases stay F32.

**Allocation.** ``allocate`` is a multiple-choice knapsack: dynamic programming over at most
2¹⁷ byte buckets (every option's bytes rounded **up** to a bucket, so the sum never exceeds the
budget), then a greedy pass spends the bytes the rounding left on the upgrades with the best
error drop per byte. The budget counts the whole file: every tensor's bytes padded to GGUF's
32-byte alignment, the F32 norms, and the header, metadata and tokenizer (measured by writing
the file's metadata once with 1-element placeholders, plus a ``MARGIN``). A budget below the
smallest possible file is ``EdgeLLMError`` naming that minimum.

The predicted losses are RTN's; with ``--quantizer gptq`` the exporter then GPTQs every block
linear onto its allocated type (``gguf_gptq``): the allocation stays RTN's (on the tiny test model
the GPTQ mix's KL to the float model is below the RTN mix's). Deliberately absent: packed edgellm weights in a mix
(refused), and importance-weighted scale searches in the sensitivity pass.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from ..errors import EdgeLLMError
from ..results import Result
from .gguf_names import file_provenance
from .gguf_sensitivity import SENSITIVITIES, effective_type, output_fisher, quantized_weight, tensor_errors
from .gguf_types import BLOCK_BYTES, TYPES, block_of

DEFAULT_LADDER = ("q2_k", "q3_k", "iq4_nl", "q4_0", "q4_k", "q5_0", "q5_k", "q6_k", "q8_0")
ALIGN = 32                 # GGUF's default tensor data alignment
MARGIN = 256               # bytes kept free for metadata that depends on the allocation (type names, counts)
BUCKETS = 1 << 17


def padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def type_bytes(shape, qtype: str) -> int:
    """Bytes (alignment-padded) a tensor of *shape* takes in the file as *qtype*, after llama.cpp's fallback.

    >>> type_bytes((576, 576), "q4_k") == type_bytes((576, 576), "q5_0") == padded(576 * 18 * 22)
    True
    """
    t = effective_type(qtype, shape)
    n = math.prod(shape)
    if t in ("f32", "f16"):
        return padded(n * (4 if t == "f32" else 2))
    return padded(n // block_of(t) * BLOCK_BYTES[t])


class _HessianPass:
    """``run_blockwise`` method that only observes: per-linear Hessians, errors per type, and the head's H."""

    def __init__(self, prefix: str, types_of, final_norm, n_blocks: int, fisher: dict | None = None):
        from ..calibrate import HessianStats, SharedInputs

        self.shared = SharedInputs(lambda k: HessianStats(k))
        self.prefix, self.types_of, self.final_norm, self.last = prefix, types_of, final_norm, n_blocks - 1
        self.fisher = fisher or {}            # linear module name -> F [out] (sensitivity "fisher")
        self.index, self.head = 0, None
        self.errors: dict[str, dict] = {}

    def start_block(self, index):
        self.index = index
        self.shared.reset()

    def new_stats(self, name, linear):
        return self.shared.proxy(linear.in_features) if f"{self.prefix}.{self.index}.{name}.weight" in self.types_of else None

    def apply_block(self, index, block, stats, block_inputs):
        for name, (lin, proxy) in stats.items():
            full = f"{self.prefix}.{index}.{name}.weight"
            self.errors[full] = tensor_errors(lin.weight, self.types_of[full], H=proxy.stats.H,
                                              out_fisher=self.fisher.get(full.removesuffix(".weight")))
        if index != self.last:
            return None
        from ..calibrate import head_hessian

        outs = block_inputs.run(block)          # the last block's outputs, through the final norm: the head's inputs
        self.head = head_hessian(outs, self.final_norm)
        return outs


@dataclass
class MixTensor:
    hf_name: str
    gguf_name: str
    shape: tuple
    options: dict              # effective type -> (bytes, predicted loss)
    chosen: str = ""


@dataclass
class MixPlan(Result):
    """A budgeted mix: the type of every tensor, its predicted loss and bytes, and the config that writes it."""

    budget_bytes: int
    fixed_bytes: int                      # header, metadata, tokenizer, F32 tensors, MARGIN
    predicted_bytes: int                  # fixed + every chosen tensor (≥ the file's size)
    minimum_bytes: int                    # the smallest possible file with this ladder
    predicted_loss: float
    n_weights: int
    calibration_tokens: int
    seconds: float
    sensitivity: str = "hessian"                     # how predicted_loss was measured (gguf_sensitivity)
    types: dict = field(default_factory=dict)       # type -> tensor count
    tensors: dict = field(default_factory=dict)     # GGUF name -> {"type", "loss", "bytes"}
    config: object = None

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.pop("config", None)
        return d


def allocate(costs: list, errors: list, budget: int, buckets: int = BUCKETS) -> list[int]:
    """The option index per item minimising Σ errors[i][k] with Σ costs[i][k] ≤ *budget* (integer bytes).

    Raises ``EdgeLLMError`` naming the minimum when even the cheapest options do not fit.

    >>> allocate([[1, 2], [1, 3]], [[5.0, 1.0], [4.0, 0.0]], 4)
    [1, 0]
    """
    minimum = sum(min(c) for c in costs)
    if minimum > budget:
        raise EdgeLLMError(f"the budget of {budget:,} bytes is below the smallest possible allocation ({minimum:,} bytes)",
                           f"allow at least {minimum:,} bytes")
    unit = max(1, -(-budget // buckets))
    B = budget // unit
    dp = np.zeros(B + 1)                                   # min Σ error of the items so far within b buckets
    choice = np.zeros((len(costs), B + 1), dtype=np.int16)
    for i, (cs, es) in enumerate(zip(costs, errors)):
        new = np.full(B + 1, np.inf)
        for k, (c, e) in enumerate(zip(cs, es)):
            u = -(-c // unit)
            if u > B:
                continue
            cand = np.full(B + 1, np.inf)
            cand[u:] = dp[:B + 1 - u] + e
            better = cand < new
            new[better] = cand[better]
            choice[i, better] = k
        dp = new
    if np.isfinite(dp[B]):
        pick, b = [0] * len(costs), B
        for i in range(len(costs) - 1, -1, -1):
            pick[i] = int(choice[i, b])
            b -= -(-costs[i][pick[i]] // unit)
    else:                                                  # the rounding up lost a fit that exists: cheapest first
        pick = [int(np.argmin(c)) for c in costs]
    left = budget - sum(c[k] for c, k in zip(costs, pick))
    while True:                                            # spend what the buckets left: best error drop per byte
        best = None
        for i, (cs, es) in enumerate(zip(costs, errors)):
            for k, (c, e) in enumerate(zip(cs, es)):
                dc, de = c - cs[pick[i]], es[pick[i]] - e
                if de > 0 and dc <= left and (best is None or de / max(dc, 1) > best[0]):
                    best = (de / max(dc, 1), i, k, dc)
        if best is None:
            return pick
        pick[best[1]], left = best[2], left - best[3]


def _file_fixed_bytes(loaded, cfg, names: dict, write) -> tuple[int, dict]:
    """(bytes of header + metadata + tokenizer, measured by a placeholder write; {gguf name: ndim})."""
    dims = {}
    for hf, t in _tensors(loaded.model):
        mod, _, suffix = hf.rpartition(".")
        dims[names[mod][0] + "." + suffix] = t.dim()
    provenance = file_provenance(loaded, cfg, [], {})          # as the writer writes it
    plans = [SimpleNamespace(name=n, gguf_type="f32", data=np.zeros((1,) * d, np.float32)) for n, d in dims.items()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layout.gguf"
        write(path, loaded.model, loaded.tokenizer, plans, cfg, loaded.meta.name, provenance)
        return path.stat().st_size - ALIGN * len(plans), dims


def _tensors(model):
    """(HF name, fp32 tensor) of every tensor the GGUF writer writes (a tied head once, as the embedding)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        yield name, t


def plan_mix(loaded, cfg, *, names: dict, write, progress: bool = False) -> MixPlan:
    """Measure every tensor's sensitivity on *cfg.calib* and allocate types from *cfg.ladder* under its budget.

    *names* (HF module -> (GGUF name, role)) and *write* (``gguf.write_gguf``) come from the GGUF
    writer. Returns a ``MixPlan`` whose ``config`` pins every 2-D tensor's type (``tensor_types``).

    >>> plan = plan_mix(load("smollm2-135m"), GGUFExportConfig(target_bpw=4.5), names=..., write=write_gguf)  # doctest: +SKIP
    >>> plan.predicted_bytes <= plan.budget_bytes                                                         # doctest: +SKIP
    True
    """
    from ..calibrate import run_blockwise
    from ..data import calibration_windows, resolve_data_path
    from ..families import family_of, find_blocks, module

    t0 = time.perf_counter()
    model = loaded.model
    if any(callable(getattr(m, "unpack", None)) for m in model.modules()):
        raise EdgeLLMError("a budgeted GGUF mix quantizes float weights; this model is already quantized",
                           "export the float model with --target-bpw/--max-bytes, or this one with one --gguf-type")
    if loaded.tokenizer is None:
        raise EdgeLLMError("a budgeted GGUF mix needs calibration text, and the model has no tokenizer",
                           "export a model folder with a tokenizer")
    pinned = type_map(cfg)
    emb_name = next(h for h, _ in _tensors(model) if h.rpartition(".")[0] in names and names[h.rpartition(".")[0]][1] == "embed")
    if cfg.embedding_type:
        pinned.setdefault(emb_name, cfg.embedding_type)
    ladder = tuple(cfg.ladder)
    weights = dict(_tensors(model))
    types_of = {hf: (pinned[hf],) if hf in pinned else ladder for hf, t in weights.items() if t.dim() == 2}
    c = cfg.calib
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and c.seq_len > limit:
        raise EdgeLLMError(f"calibration seq_len {c.seq_len} is beyond the model's maximum position ({limit})",
                           f"use --calib-seq-len {limit} or less")
    ids = calibration_windows(loaded.tokenizer, resolve_data_path(c.data), c.samples, c.seq_len, c.seed)
    prefix, blocks = find_blocks(model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    emb_module = emb_name.removesuffix(".weight")
    fisher = None
    if cfg.sensitivity == "fisher":
        mods = dict(model.named_modules())
        linears = [hf.removesuffix(".weight") for hf in types_of if isinstance(mods.get(hf.removesuffix(".weight")), nn.Linear)]
        fisher = output_fisher(model, ids, linears + (["lm_head"] if tied and "lm_head" in mods else []), emb_module)
    method = _HessianPass(prefix, types_of, module(model, "final_norm"), len(blocks), fisher)
    with torch.no_grad():
        run_blockwise(model, ids, method, progress=progress, desc="mix sensitivity")
        counts = torch.bincount(ids.flatten(), minlength=weights[emb_name].shape[0]).float()
        head = method.head.H
        f = fisher or {}
        errors = dict(method.errors)
        errors[emb_name] = tensor_errors(weights[emb_name], types_of[emb_name], H=head if tied else None, counts=counts,
                                         out_fisher=f.get("lm_head") if tied else None, lookup_fisher=f.get(emb_module))
        if not tied and "lm_head.weight" in weights:
            errors["lm_head.weight"] = tensor_errors(weights["lm_head.weight"], types_of["lm_head.weight"], H=head,
                                                     out_fisher=f.get("lm_head"))
    fixed, dims = _file_fixed_bytes(loaded, cfg, names, write)
    gguf_name = {hf: names[hf.rpartition(".")[0]][0] + "." + hf.rpartition(".")[2] for hf in weights}
    fixed += MARGIN + sum(type_bytes(t.shape, "f32") for t in weights.values() if t.dim() != 2)
    missing = [hf for hf, t in weights.items() if t.dim() == 2 and hf not in errors]
    if missing:
        raise EdgeLLMError(f"no sensitivity measured for {', '.join(missing[:3])}", "report the model: its linears were not seen")
    mix = [MixTensor(hf, gguf_name[hf], tuple(weights[hf].shape),
                     {t: (type_bytes(weights[hf].shape, t), e) for t, e in errors[hf].items()})
           for hf, W in weights.items() if W.dim() == 2]
    n_weights = sum(t.numel() for t in weights.values())
    budget = cfg.max_bytes if cfg.max_bytes is not None else int(cfg.target_bpw * n_weights / 8)
    minimum = fixed + sum(min(b for b, _ in m.options.values()) for m in mix)
    if minimum > budget:
        asked = f"{cfg.target_bpw:g} bits per weight ({budget:,} bytes)" if cfg.max_bytes is None else f"{budget:,} bytes"
        raise EdgeLLMError(f"a budget of {asked} is below the smallest possible file ({minimum:,} bytes, "
                           f"{8 * minimum / n_weights:.3f} bits per weight with ladder {', '.join(ladder)})",
                           f"use --max-bytes {minimum} or more, or --target-bpw {math.ceil(800 * minimum / n_weights) / 100:g}")
    opts = [list(m.options.items()) for m in mix]
    pick = allocate([[b for _, (b, _) in o] for o in opts], [[e for _, (_, e) in o] for o in opts], budget - fixed)
    for m, o, k in zip(mix, opts, pick):
        m.chosen = o[k][0]
    chosen_bytes = sum(m.options[m.chosen][0] for m in mix)
    counts_by_type: dict[str, int] = {}
    for m in mix:
        counts_by_type[m.chosen] = counts_by_type.get(m.chosen, 0) + 1
    by_weights: dict[str, int] = {}
    for m in mix:
        if m.hf_name != emb_name:
            by_weights[m.chosen] = by_weights.get(m.chosen, 0) + math.prod(m.shape)
    main = max(by_weights, key=by_weights.get) if by_weights else next(iter(counts_by_type))
    new_cfg = dataclasses.replace(cfg, gguf_type=main, embedding_type=next(m.chosen for m in mix if m.hf_name == emb_name),
                                  tensor_types={m.hf_name: m.chosen for m in mix}, target_bpw=None, max_bytes=None)
    return MixPlan(budget_bytes=budget, fixed_bytes=fixed, predicted_bytes=fixed + chosen_bytes, minimum_bytes=minimum,
                   predicted_loss=sum(m.options[m.chosen][1] for m in mix), n_weights=n_weights,
                   calibration_tokens=int(ids.numel()), seconds=time.perf_counter() - t0, sensitivity=cfg.sensitivity,
                   types=counts_by_type,
                   tensors={m.gguf_name: {"type": m.chosen, "loss": m.options[m.chosen][1], "bytes": m.options[m.chosen][0]}
                            for m in mix}, config=new_cfg)


# -- the config fields of a budgeted export (GGUFExportConfig calls these) ---------------------------
def normalize_fields(cfg) -> None:
    """Validate and normalise *cfg*'s mix fields in place (a frozen dataclass): ``tensor_types`` to sorted
    ``NAME=TYPE`` strings, ``max_bytes`` to an int, ``calib`` to a ``CalibConfig``."""
    from ..calibconfig import CalibConfig
    from ..placed import parse_size

    known = ("f32", "f16") + TYPES
    tt = cfg.tensor_types
    pairs = list(tt.items()) if isinstance(tt, dict) else [s.split("=", 1) if isinstance(s, str) else tuple(s) for s in tt]
    for p in pairs:
        if len(p) != 2 or p[1] not in known:
            raise EdgeLLMError(f"bad tensor type entry {'='.join(map(str, p))!r}",
                               f"write HF_TENSOR_NAME=TYPE with TYPE one of: {', '.join(known)}")
    object.__setattr__(cfg, "tensor_types", tuple(sorted(f"{n}={t}" for n, t in pairs)))
    for t in cfg.ladder:
        if t not in known:
            raise EdgeLLMError(f"unknown GGUF type '{t}' in the ladder", f"use types from: {', '.join(known)}")
    if cfg.sensitivity not in SENSITIVITIES:
        raise EdgeLLMError(f"unknown mix sensitivity '{cfg.sensitivity}'", f"use --sensitivity {' or '.join(SENSITIVITIES)}")
    if not cfg.ladder:
        raise EdgeLLMError("the type ladder of a budgeted mix is empty", f"e.g. --ladder {' --ladder '.join(DEFAULT_LADDER[:3])}")
    object.__setattr__(cfg, "ladder", tuple(cfg.ladder))
    if cfg.max_bytes is not None:
        object.__setattr__(cfg, "max_bytes", parse_size(cfg.max_bytes))
        if cfg.max_bytes <= 0:
            raise EdgeLLMError(f"--max-bytes must be positive (got {cfg.max_bytes})", "e.g. --max-bytes 100MB")
    if cfg.target_bpw is not None and not cfg.target_bpw > 0:
        raise EdgeLLMError(f"--target-bpw must be positive (got {cfg.target_bpw})", "e.g. --target-bpw 4.5")
    if cfg.target_bpw is not None and cfg.max_bytes is not None:
        raise EdgeLLMError("give one budget: --target-bpw or --max-bytes, not both", "drop one of them")
    if isinstance(cfg.calib, dict):
        object.__setattr__(cfg, "calib", CalibConfig(**cfg.calib))


def budgeted(cfg) -> bool:
    return cfg.target_bpw is not None or cfg.max_bytes is not None


def type_map(cfg) -> dict[str, str]:
    """HF tensor name -> pinned GGUF type, from *cfg.tensor_types*."""
    return dict(s.split("=", 1) for s in cfg.tensor_types)


def check_size(plan: MixPlan | None, path: Path) -> None:
    """The written file must be within the mix's budget (the allocation counts the whole file)."""
    if plan is not None and path.stat().st_size > plan.budget_bytes:
        raise EdgeLLMError(f"the mix is {path.stat().st_size:,} bytes, over its budget of {plan.budget_bytes:,}",
                           "report this: the allocator's count of the file's bytes is wrong")


def member_types(cfg) -> set[str]:
    """Every type a file written from *cfg* may hold (the verifier takes the loosest one's tolerance)."""
    types = {cfg.gguf_type, cfg.embedding} | set(type_map(cfg).values())
    return types | set(cfg.ladder) if budgeted(cfg) else types


def summary(plan: dict) -> str:
    """One line for the CLI: budget, predicted size and loss, tensors per type.

    >>> summary({"budget_bytes": 10, "predicted_bytes": 9, "predicted_loss": 0.5, "types": {"q4_k": 3}})
    'mix: 9 of 10 bytes (predicted), predicted loss 0.5; q4_k 3'
    """
    types = ", ".join(f"{t} {n}" for t, n in sorted(plan["types"].items(), key=lambda x: -x[1]))
    return f"mix: {plan['predicted_bytes']:,} of {plan['budget_bytes']:,} bytes (predicted), " \
           f"predicted loss {plan['predicted_loss']:.4g}; {types}"


__all__ = ["DEFAULT_LADDER", "SENSITIVITIES", "MixPlan", "allocate", "plan_mix", "quantized_weight", "tensor_errors",
           "type_bytes"]
