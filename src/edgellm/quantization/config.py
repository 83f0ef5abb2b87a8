"""``QuantConfig``: every quantization setting, with its default and its validation.

The CLI flags (generated from the fields, ``commands/flags.py``), YAML recipes and the API all
build this one frozen dataclass, so defaults live in one place; the calibration data is the
shared ``CalibConfig`` in ``calib``. Granularity is one field, ``group_size``:

* a positive int ``g``: per-group, ``g`` consecutive input channels share a scale; when ``g``
  does not divide ``in_features`` the last group is ragged (shorter), never padded;
* ``None``: per-channel (one scale per output row);
* ``-1``: per-tensor (one scale for the whole matrix, stored broadcast per row).

Deliberately left out: mixed per-layer bit widths (use two runs with include/exclude).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..calibconfig import CalibConfig, config_field
from ..errors import EdgeLLMError

METHODS = ("rtn", "gptq", "awq")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: method, grid and calibration.

    >>> QuantConfig(method="gptq", bits=4, group_size=32).symmetric
    True
    >>> QuantConfig(method="gptq", bits=4, calib=CalibConfig(samples=32, seq_len=256)).calib.samples
    32
    """

    method: str = config_field("rtn", "rtn, gptq or awq", choices=METHODS)
    bits: int = config_field(8, "weight bits, 2..8")
    group_size: int | None = config_field(None, "g > 0 per-group (ragged last group), 'channel' per output row, "
                                                "'tensor' one scale", metavar="G")
    symmetric: bool = config_field(True, "symmetric grid with a fixed zero 2^(b-1) (GGUF Q4_0/Q8_0); "
                                         "--asym: min-max with zero points")
    act_bits: int | None = config_field(None, "8 = W8A8 (dynamic per-token int8 activations); none = weight-only")
    include: tuple[str, ...] = config_field((), "quantize only linears matching GLOB (repeatable)", metavar="GLOB")
    exclude: tuple[str, ...] = config_field((), "leave linears matching GLOB in float (repeatable)", metavar="GLOB")
    quantize_embeddings: bool = config_field(False, "also store the input embedding and LM head in 8-bit per row")
    calib: CalibConfig = field(default_factory=CalibConfig)
    # GPTQ
    damp: float = config_field(0.01, "GPTQ dampening, fraction of mean diag(H)")
    block_size: int = config_field(128, "GPTQ lazy-update block width (columns)")
    act_order: bool = config_field(False, "GPTQ: columns by decreasing Hessian diagonal")
    static_groups: bool = config_field(False, "GPTQ with act-order: group grids fixed up front from the original weights")
    mse_clip: bool = config_field(False, "choose each group's range by a shrink search minimising weight MSE")
    awq_prescale: bool = config_field(False, "GPTQ: AWQ's activation-aware scaling first")
    # AWQ
    awq_grid: int = config_field(20, "AWQ alpha grid points in [0, 1)")
    clip_search: bool = config_field(True, "AWQ: search a per-group clipping range on the output error")
    awq_tokens: int = config_field(4096, "AWQ: token subsample of each linear's inputs kept for the search")

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
        if isinstance(self.calib, str):      # a bare file name: the other calibration fields keep their defaults
            object.__setattr__(self, "calib", CalibConfig(data=self.calib))
        if not isinstance(self.calib, CalibConfig):
            raise EdgeLLMError(f"calib must be a CalibConfig (got {type(self.calib).__name__})",
                               "use calib=CalibConfig(samples=128, seq_len=512)")
        for name in ("block_size", "awq_grid", "awq_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
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
