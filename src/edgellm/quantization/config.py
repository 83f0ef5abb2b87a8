"""``QuantConfig``: every quantization setting, with its default and its validation.

The CLI flags, YAML recipes and the API all build this one frozen dataclass, so defaults live
in one place. Granularity is one field, ``group_size``:

* a positive int ``g``: per-group, ``g`` consecutive input channels share a scale; when ``g``
  does not divide ``in_features`` the last group is ragged (shorter), never padded;
* ``None``: per-channel (one scale per output row);
* ``-1``: per-tensor (one scale for the whole matrix, stored broadcast per row).

Deliberately left out: mixed per-layer bit widths (use two runs with include/exclude).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import EdgeLLMError

METHODS = ("rtn", "gptq", "awq")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: method, grid and calibration.

    >>> QuantConfig(method="gptq", bits=4, group_size=32).symmetric
    True
    """

    method: str = "rtn"                 # "rtn" | "gptq" | "awq"
    bits: int = 8                       # 2..8
    group_size: int | None = None       # g > 0 per-group (ragged last group), None per-channel, -1 per-tensor
    symmetric: bool = True              # symmetric: fixed zero 2^(b-1) (GGUF Q4_0/Q8_0 grids); else min-max with a zero point
    act_bits: int | None = None         # None weight-only; 8 = W8A8 with dynamic per-token int8 activations
    include: tuple[str, ...] = ()       # fnmatch patterns over linear names; empty = every nn.Linear
    exclude: tuple[str, ...] = ()       # fnmatch patterns removed after include
    quantize_embeddings: bool = False   # also quantize the input embedding and lm_head to 8-bit per row
    calib: str = "wikitext-2/wiki.valid.tokens"   # calibration text (relative names resolve in the data folder)
    calib_samples: int = 128
    calib_len: int = 512
    seed: int = 0
    # GPTQ
    damp: float = 0.01                  # dampening, fraction of mean(diag H)
    block_size: int = 128               # lazy-update block width (columns)
    act_order: bool = False             # process columns by decreasing diag(H)
    static_groups: bool = False         # with act_order: group qparams fixed up front from the original weights
    mse_clip: bool = False              # choose each group's range by a shrink search minimising weight MSE
    awq_prescale: bool = False          # GPTQ only: AWQ's activation-aware scaling first, then GPTQ
    # AWQ
    awq_grid: int = 20                  # alpha grid points in [0, 1)
    clip_search: bool = True            # AWQ: search a per-group clipping range on the output error
    awq_tokens: int = 4096              # token subsample of each linear's inputs kept for the search

    def __post_init__(self):
        if self.method not in METHODS:
            raise EdgeLLMError(f"unknown quantization method '{self.method}'", f"use one of: {', '.join(METHODS)}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise EdgeLLMError(f"bits must be an integer from 2 to 8 (got {self.bits!r})", "use --bits 8, 4, 3 or 2")
        gs = self.group_size
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or (gs <= 0 and gs != -1)):
            raise EdgeLLMError(f"group size must be a positive integer, None (per-channel) or -1 (per-tensor); got {gs!r}",
                               "use --group-size 32, 64, 128, 'channel' or 'tensor'")
        if self.act_bits not in (None, 8):
            raise EdgeLLMError(f"act_bits must be None or 8 (got {self.act_bits!r})", "use --act-bits 8 for W8A8")
        if self.act_bits == 8 and (self.bits != 8 or self.group_size not in (None, -1)):
            raise EdgeLLMError("W8A8 (act_bits=8) needs 8-bit per-channel or per-tensor weights",
                               "use --bits 8 --group-size channel with --act-bits 8")
        for name in ("calib_samples", "calib_len", "block_size", "awq_grid", "awq_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "calib_len" else 1):
                raise EdgeLLMError(f"{name} must be a positive integer (got {v!r})", f"fix {name}")
        if not 0 <= self.damp < 1:
            raise EdgeLLMError(f"damp must be in [0, 1) (got {self.damp})", "the usual value is 0.01")
        if self.static_groups and not self.act_order:
            raise EdgeLLMError("static_groups only applies with act_order", "add act_order: true or drop static_groups")
        for name in ("include", "exclude"):
            v = getattr(self, name)
            if isinstance(v, str):
                object.__setattr__(self, name, (v,))
            elif not all(isinstance(p, str) for p in v):
                raise EdgeLLMError(f"{name} must be a list of name patterns", "e.g. ['*.mlp.*']")
            else:
                object.__setattr__(self, name, tuple(v))

    @property
    def calibrated(self) -> bool:
        return self.method in ("gptq", "awq")

    def describe(self) -> str:
        """Short label, e.g. ``gptq-w4-g32-sym``."""
        g = {None: "ch", -1: "t"}.get(self.group_size, f"g{self.group_size}")
        a = "a8" if self.act_bits else ""
        return f"{self.method}-w{self.bits}{a}-{g}-{'sym' if self.symmetric else 'asym'}"
