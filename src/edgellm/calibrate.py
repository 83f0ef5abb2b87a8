"""The one layer-by-layer calibration runner, shared by GPTQ, AWQ, Wanda and SparseGPT.

How it works (the GPTQ recipe, generalised):

1. Run the model on the calibration batch only up to the first block, and capture each
   sample's block inputs (hidden states plus the keyword arguments the block receives:
   attention mask, rotary embeddings, ...). Nothing past the first block is computed.
2. For each block in turn: hook its Linear layers, run the block on every sample so the
   method's per-linear accumulators see the inputs (``method.new_stats``); hand block and
   statistics to ``method.apply_block``, which changes weights in place (quantize, prune,
   rescale); then run the block again to produce the next block's inputs, so later blocks
   calibrate on the already-compressed model's activations.

A method with ``sequential = True`` gets "true sequential" calibration inside each block too:
the block's linears are split into stages by the input they read (q/k/v, then o, then gate/up,
then down for a Llama block; found by running the block once, no names assumed), and each
stage is observed and changed before the next one is observed, so o_proj calibrates on the
already-pruned q/k/v's outputs. Every statistics pass (a stage's, or the whole block's) stops
as soon as each observed linear has had its input, before the last one's product.

Peak memory is the model plus one batch of block activations. Model families differ only
by data: the family registry (``families.py``) says where the blocks are (``find_blocks``,
re-exported here), and a method reads the calibrated model's ``FamilySpec`` from
``current_family()`` while the runner drives it. Deliberately left out: offloading the block
inputs to disk.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from .errors import EdgeLLMError
from .families import FamilySpec, family_of, find_blocks

_FAMILY: ContextVar[FamilySpec | None] = ContextVar("edgellm_calibration_family", default=None)


def current_family() -> FamilySpec:
    """The ``FamilySpec`` of the model ``run_blockwise`` is calibrating (methods read family data from it).

    >>> current_family().awq_folds[0][0]       # inside a method's apply_block  # doctest: +SKIP
    'input_layernorm'
    """
    spec = _FAMILY.get()
    if spec is None:
        raise EdgeLLMError("current_family() is only defined inside run_blockwise", "call it from a BlockMethod")
    return spec

def find_linears(module: nn.Module, prefix: str = "") -> dict[str, nn.Linear]:
    """All nn.Linear submodules by dotted name (relative to *module*).

    >>> sorted(find_linears(find_blocks(llama)[1][0]))[:2]      # doctest: +SKIP
    ['mlp.down_proj', 'mlp.gate_proj']
    """
    return {f"{prefix}{n}": m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


class Stats(Protocol):
    def add(self, x: torch.Tensor) -> None:
        """Accumulate one batch of a linear's inputs, ``x: [tokens, in_features]``."""


class BlockMethod(Protocol):
    """What a calibrated method plugs into ``run_blockwise``."""

    def new_stats(self, name: str, linear: nn.Linear) -> Stats | None:
        """An accumulator for this linear's inputs, or None to leave it alone.

        A method may also define ``start_block(index)`` (before the block's first ``new_stats``),
        ``finish_block(index)`` (after its outputs pass), ``sequential = True`` (see the module
        docstring) and ``forward_dtype`` (run the block forwards under CPU autocast to that dtype)."""

    def apply_block(self, index: int, block: nn.Module, stats: dict[str, tuple[nn.Linear, Stats]],
                    block_inputs: "BlockInputs") -> "list[torch.Tensor] | None":
        """Change the block's weights in place using the accumulated statistics.

        Return None (the usual case) and the runner recomputes the block's outputs; a method
        that did not change the block may return the outputs it computed, saving a pass."""


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    hidden: list[torch.Tensor]          # per sample: [1, L, H]
    kwargs: list[dict]                  # per sample: the other keyword arguments the block gets

    def feed(self, block: nn.Module) -> None:
        """Run *block* on every sample for its hooks' sake; a hook may end a sample early (``_StopForward``)."""
        for h, kw in zip(self.hidden, self.kwargs):
            try:
                block(h, **kw)
            except _StopForward:
                pass

    def run(self, block: nn.Module) -> list[torch.Tensor]:
        """Outputs of *block* for every sample (hidden states only)."""
        outs = [block(h, **kw) for h, kw in zip(self.hidden, self.kwargs)]
        return [out[0] if isinstance(out, (tuple, list)) else out for out in outs]


@torch.no_grad()
def capture_block_inputs(model: nn.Module, calib: torch.Tensor, blocks: nn.ModuleList) -> BlockInputs:
    """Run *model* on each row of *calib* ``[N, L]`` until the first block; keep its inputs."""
    hidden, kwargs = [], []

    def grab(_module, args, kw):
        h = args[0] if args else kw.pop("hidden_states")
        kw = {k: v for k, v in kw.items() if k not in ("hidden_states", "cache", "past_key_values", "past_key_value")}
        kw["use_cache"] = False
        hidden.append(h.detach())
        kwargs.append(kw)
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for row in calib:
            try:
                model(input_ids=row.view(1, -1).to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return BlockInputs(hidden, kwargs)


@torch.no_grad()
def run_blockwise(model: nn.Module, calib: torch.Tensor, method: BlockMethod, progress: bool = True,
                  desc: str = "calibrate") -> None:
    """Drive *method* over every block of *model* with calibration ids ``calib: [N, L]``.

    >>> run_blockwise(model, calibration_windows(tok, valid, 128, 512), GPTQMethod(cfg))  # doctest: +SKIP
    """
    if calib.dim() != 2 or calib.shape[0] == 0:
        raise EdgeLLMError(f"calibration ids must be [N, L] with N ≥ 1 (got {tuple(calib.shape)})",
                           "check --calib-samples / --calib-len")
    _, blocks = find_blocks(model)
    token = _FAMILY.set(family_of(model))
    was_training = model.training
    model.eval()
    try:
        _run_blocks(blocks, capture_block_inputs(model, calib, blocks), method, progress, desc)
    finally:
        model.train(was_training)
        _FAMILY.reset(token)


def _run_blocks(blocks: nn.ModuleList, inputs: "BlockInputs", method: BlockMethod, progress: bool, desc: str) -> None:
    sequential = bool(getattr(method, "sequential", False))
    dtype = getattr(method, "forward_dtype", None)
    device = next(blocks[0].parameters()).device.type
    cast = (lambda: torch.autocast(device, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    for i, block in enumerate(tqdm(blocks, desc=desc, unit="block", disable=not progress, leave=False)):
        if hasattr(method, "start_block"):
            method.start_block(i)
        linears = find_linears(block)
        stages = linear_stages(block, linears, inputs) if sequential else [list(linears)]
        outputs = None
        for stage in stages:
            stats: dict[str, tuple[nn.Linear, Stats]] = {}
            for name in stage:
                acc = method.new_stats(name, linears[name])
                if acc is not None:
                    stats[name] = (linears[name], acc)
            handles = [linears[n].register_forward_pre_hook(_feeder(acc)) for n, (_, acc) in stats.items()]
            handles += _stop_when_all_seen(block, [linears[n] for n in stats])
            try:
                if stats:  # nothing to observe: skip the statistics pass
                    with cast():
                        inputs.feed(block)
            finally:
                for h in handles:
                    h.remove()
            outputs = method.apply_block(i, block, stats, inputs)
        # a method that left the block unchanged may hand back its outputs; the last block's feed nothing
        with cast():
            inputs.hidden = outputs if outputs is not None else [] if i == len(blocks) - 1 else inputs.run(block)
        if hasattr(method, "finish_block"):
            method.finish_block(i)


@torch.no_grad()
def linear_stages(block: nn.Module, linears: dict[str, nn.Linear], inputs: BlockInputs) -> list[list[str]]:
    """The block's linears grouped by the input tensor they read, in the order the forward reaches them.

    One forward of the first sample: linears that read the very same tensor (q/k/v; gate/up) form one
    stage; a linear never called goes last on its own.
    """
    stages: dict[tuple, list[str]] = {}        # input tensor -> the linears that read it, in call order
    seen: set[str] = set()
    keep = []                                  # hold the inputs so no address is reused during the pass

    def record(name):
        def hook(_module, args, _output):
            if name not in seen:
                seen.add(name)
                keep.append(args[0])
                stages.setdefault(tensor_key(args[0]), []).append(name)
        return hook

    handles = [lin.register_forward_hook(record(n)) for n, lin in linears.items()]
    try:
        block(inputs.hidden[0], **inputs.kwargs[0])
    finally:
        for h in handles:
            h.remove()
    return list(stages.values()) + [[n] for n in linears if n not in seen]


def tensor_key(x: torch.Tensor) -> tuple:
    """Identity of a tensor's data (storage, offset, shape, strides): equal keys mean the very same values."""
    return x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), tuple(x.stride())


def _stop_when_all_seen(block: nn.Module, observed: list[nn.Linear]) -> list:
    """Pre-hooks that end a sample's pass once every observed linear got its input (statistics need
    nothing after that: a Llama block's statistics pass skips down_proj's product and the residual)."""
    seen: set[int] = set()

    def start(_module, _args):
        seen.clear()

    def check(module, _args):
        seen.add(id(module))
        if len(seen) == len(observed):
            raise _StopForward

    return [block.register_forward_pre_hook(start)] + [lin.register_forward_pre_hook(check) for lin in observed] \
        if observed else []


def _feeder(acc: Stats):
    def hook(_module, args):
        acc.add(args[0].detach().reshape(-1, args[0].shape[-1]))
    return hook


class HessianStats:
    """Running ``H = 2/n · Σ xᵀx`` over a linear's inputs (GPTQ, SparseGPT), in float32.

    H is symmetric, so only its block upper triangle is multiplied: with b column blocks that is
    (b+1)/2b of the full product (5/8 at b = 4, used from 512 inputs up); reading ``H`` mirrors it.
    (bf16 products, 3× faster, were tried: their rounding can leave a near-singular H indefinite.)

    >>> s = HessianStats(4); s.add(torch.randn(10, 4)); s.H.shape
    torch.Size([4, 4])
    """

    def __init__(self, in_features: int, device=None, blocks: int | None = None):
        self._upper = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        blocks = blocks or (4 if in_features >= 512 else 1)
        self._edges = sorted({round(in_features * j / blocks) for j in range(blocks + 1)})
        self._H, self.n = None, 0

    def add(self, x: torch.Tensor) -> None:
        x = x.float()
        m = x.shape[0]
        self._upper.mul_(self.n / (self.n + m))
        self.n += m
        for a, b in zip(self._edges[:-1], self._edges[1:]):
            self._upper[:b, a:b].addmm_(x[:, :b].t(), x[:, a:b], alpha=2.0 / self.n)
        self._H = None

    @property
    def H(self) -> torch.Tensor:
        if self._H is None and self._upper is not None:
            self._H = torch.triu(self._upper) + torch.triu(self._upper, 1).t()
        return self._H

    @H.setter
    def H(self, value) -> None:          # ``stats.H = None`` frees it
        self._H = self._upper = value


class InputNormStats:
    """Running per-input-channel sum of squares and count (Wanda's ‖X_j‖₂, AWQ's mean |x|)."""

    def __init__(self, in_features: int, device=None):
        self.sq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.abs = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.sq += (x * x).sum(0)
        self.abs += x.abs().sum(0)
        self.n += x.shape[0]

    @property
    def l2(self) -> torch.Tensor:
        """‖X_j‖₂ over all tokens seen, per input channel j."""
        return self.sq.sqrt().float()

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.abs / max(self.n, 1)).float()


class InputSampleStats:
    """A uniform random subsample (without replacement) of a linear's input rows, at most *max_rows*.

    Priority sampling: the *max_rows* smallest of seeded random row keys are kept (in arrival order),
    whatever the batching; a row is copied only if its key beats the cut-off, compacted lazily.

    >>> s = InputSampleStats(4, max_rows=8); s.add(torch.randn(20, 4)); s.x.shape
    torch.Size([8, 4])
    """

    def __init__(self, in_features: int, max_rows: int = 4096, seed: int = 0, device=None):
        self.max_rows, self.gen, self.n = max_rows, torch.Generator().manual_seed(seed), 0
        self._x = torch.zeros(0, in_features, dtype=torch.float32, device=device)
        self._keys = torch.zeros(0, dtype=torch.float32, device=device)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._cut = None                 # the max_rows-th smallest key at the last compaction

    def add(self, x: torch.Tensor) -> None:
        self.n += x.shape[0]
        keys = torch.rand(x.shape[0], generator=self.gen).to(self._keys.device)
        if self._cut is not None:        # a row whose key is above the cut-off can never be kept
            keep = keys < self._cut
            x, keys = x[keep].float(), keys[keep]
        self._pending.append((x.to(torch.float32, copy=True) if self._cut is None else x, keys))
        if sum(k.numel() for _, k in self._pending) >= self.max_rows:
            self._compact()

    def _compact(self) -> None:
        xs = torch.cat([self._x] + [p[0] for p in self._pending])
        ks = torch.cat([self._keys] + [p[1] for p in self._pending])
        if ks.numel() > self.max_rows:
            idx = ks.topk(self.max_rows, largest=False).indices.sort().values
            xs, ks = xs[idx], ks[idx]
        self._cut = ks.max() if ks.numel() >= self.max_rows else None
        self._x, self._keys, self._pending = xs, ks, []

    @property
    def x(self) -> torch.Tensor:
        """The kept rows ``[≤ max_rows, in_features]``, in arrival order."""
        if self._pending:
            self._compact()
        return self._x


class SharedInputs:
    """Let linears that read the very same input tensor (q/k/v, gate/up) share one accumulator.

    ``SharedInputs(make)`` hands out per-linear proxies (``proxy(in_features)``); on its first
    batch a proxy whose input tensor was already fed to another proxy becomes an alias of it and
    adds nothing, so e.g. one Hessian serves q, k and v (a third of the work). Each proxy holds a
    reference to its latest input so a freed tensor's address is never mistaken for a shared one.
    ``proxy.stats`` is the (possibly shared) accumulator. Call ``reset()`` between blocks.
    """

    def __init__(self, make):
        self.make = make
        self.latest: dict[tuple, "SharedInputs.Proxy"] = {}

    def proxy(self, in_features: int) -> "SharedInputs.Proxy":
        return SharedInputs.Proxy(self, in_features)

    def reset(self) -> None:
        self.latest.clear()

    class Proxy:
        def __init__(self, owner: "SharedInputs", in_features: int):
            self.owner, self.in_features = owner, in_features
            self.alias: "SharedInputs.Proxy | None" = None
            self._stats = None
            self._key = None
            self._x = None

        @property
        def stats(self):
            return self.alias.stats if self.alias is not None else self._stats

        def add(self, x: torch.Tensor) -> None:
            if self.alias is not None:
                return
            key = tensor_key(x)
            if self._stats is None:
                other = self.owner.latest.get(key)
                if other is not None and other is not self:
                    self.alias = other
                    return
                self._stats = self.owner.make(self.in_features)
            self._stats.add(x)
            if self._key is not None and self.owner.latest.get(self._key) is self:
                del self.owner.latest[self._key]
            self._key, self._x = key, x
            self.owner.latest[key] = self


def head_hessian(outs, final_norm=None) -> HessianStats:
    """The output head's input Hessian: the last block's outputs *outs* (one tensor per calibration batch)
    through *final_norm* (None: as they are). Shared by the GGUF mix's sensitivity pass and GPTQ of the head."""
    stats = None
    for h in outs:
        x = final_norm(h) if final_norm is not None else h
        x = x.reshape(-1, x.shape[-1])
        stats = stats or HessianStats(x.shape[-1])
        stats.add(x)
    return stats
