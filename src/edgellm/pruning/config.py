"""``PruneConfig``: the one description of a pruning job (API, CLI flags and YAML recipes map onto it).

Two families share the dataclass:

* **unstructured / N:M** (``structure=None``): ``method`` is ``magnitude``, ``wanda`` or
  ``sparsegpt``; ``sparsity`` is the fraction of each pruned linear's weights set to zero, or
  ``pattern="2:4"`` keeps at most N of every M consecutive input weights (sparsity 1 − N/M).
* **structured** (``structure="depth"|"width"|"heads"``): whole decoder layers, MLP channels or
  attention heads are physically removed; the size is ``ratio`` (fraction of layers / channels /
  heads) or a budget (``max_params`` or ``max_bytes`` for the whole model). ``method`` picks the
  importance of channels and heads: ``wanda`` (activation norms × weight norms, calibrated) or
  ``magnitude`` (weight norms only). Layers are always ranked by a measured score on
  calibration data (angular distance between a block's input and output).

Calibrated methods draw their windows as ``calib`` (the shared ``CalibConfig``) says. Validation
happens here, in ``__post_init__``; checks that need the model's shapes (a pattern
that does not divide a dimension, a ratio that removes every head) happen in ``prune``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..calibconfig import CalibConfig, config_field
from ..errors import EdgeLLMError

METHODS = ("magnitude", "wanda", "sparsegpt")
STRUCTURES = ("depth", "width", "heads")
CALIBRATED = ("wanda", "sparsegpt")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``: keep at most N of every M consecutive weights.

    >>> parse_pattern("2:4")
    (2, 4)
    """
    try:
        n_s, m_s = str(pattern).split(":")
        n, m = int(n_s), int(m_s)
    except ValueError:
        raise EdgeLLMError(f"pattern '{pattern}' is not of the form N:M", "use e.g. 2:4 or 4:8") from None
    if n <= 0 or m <= 0:
        raise EdgeLLMError(f"pattern '{pattern}' needs N ≥ 1 and M ≥ 1", "use e.g. 2:4 or 4:8")
    if n >= m:
        raise EdgeLLMError(f"pattern '{pattern}' has N ≥ M, so nothing would be pruned", "N must be smaller than M, e.g. 2:4")
    return n, m


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how.

    >>> PruneConfig(method="wanda", sparsity=0.5).effective_sparsity
    0.5
    >>> PruneConfig(method="sparsegpt", pattern="2:4").effective_sparsity
    0.5
    >>> PruneConfig(structure="depth", ratio=0.25).structure
    'depth'
    """

    method: str = config_field("wanda", "magnitude, wanda or sparsegpt (structured: wanda or magnitude)",
                               choices=METHODS)
    sparsity: float | None = config_field(None, "unstructured: fraction of weights zeroed per linear (none = 0.5)")
    pattern: str | None = config_field(None, "semi-structured N:M, e.g. 2:4", metavar="N:M")
    structure: str | None = config_field(None, "remove whole layers (depth), MLP channels (width) or attention heads",
                                         choices=STRUCTURES)
    ratio: float | None = config_field(None, "structured: fraction of layers / channels / heads removed")
    max_params: int | None = config_field(None, "structured: parameter budget for the whole model (e.g. 100e6)")
    max_bytes: int | None = config_field(None, "structured: byte budget (parameters × element size)")
    calib: CalibConfig = field(default_factory=CalibConfig)
    include: tuple[str, ...] = config_field((), "prune only linears matching GLOB (default: every linear in the blocks)",
                                            metavar="GLOB")
    exclude: tuple[str, ...] = config_field((), "leave linears matching GLOB dense", metavar="GLOB")
    blocksize: int = config_field(128, "SparseGPT column block (adaptive mask selection)")
    damp: float = config_field(0.01, "SparseGPT dampening, fraction of mean diag(H)")
    sequential: bool = config_field(False, "wanda/sparsegpt: calibrate each block stage by stage "
                                           "(q/k/v, then o, then gate/up, then down)")

    def __post_init__(self):
        if isinstance(self.include, str):
            object.__setattr__(self, "include", (self.include,))
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        object.__setattr__(self, "include", tuple(self.include or ()))
        object.__setattr__(self, "exclude", tuple(self.exclude or ()))
        if self.structure is not None:
            self._check_structured()
        else:
            self._check_unstructured()
        if isinstance(self.calib, str):      # a bare file name: the other calibration fields keep their defaults
            object.__setattr__(self, "calib", CalibConfig(data=self.calib))
        if not isinstance(self.calib, CalibConfig):
            raise EdgeLLMError(f"calib must be a CalibConfig (got {type(self.calib).__name__})",
                               "use calib=CalibConfig(samples=128, seq_len=512)")
        if not 0.0 <= self.damp < 1.0:
            raise EdgeLLMError(f"damp {self.damp} is outside [0, 1)", "use e.g. 0.01")
        if self.blocksize < 1:
            raise EdgeLLMError(f"blocksize {self.blocksize} must be ≥ 1", "use e.g. 128")

    def _check_unstructured(self):
        if self.method not in METHODS:
            raise EdgeLLMError(f"unknown pruning method '{self.method}'", f"use one of: {', '.join(METHODS)}")
        for name in ("ratio", "max_params", "max_bytes"):
            if getattr(self, name) is not None:
                raise EdgeLLMError(f"'{name}' is for structured pruning, but no structure was given",
                                   f"add structure= one of {', '.join(STRUCTURES)}, or use sparsity=")
        if self.sparsity is not None:
            s = float(self.sparsity)
            if not 0.0 <= s < 1.0 or s != s:
                raise EdgeLLMError(f"sparsity {self.sparsity} is outside [0, 1)", "use a fraction such as 0.5")
            if s == 0:
                raise EdgeLLMError("sparsity 0 prunes nothing", "use a fraction such as 0.5")
        if self.pattern is not None:
            n, m = parse_pattern(self.pattern)
            if self.sparsity is not None and abs(float(self.sparsity) - (1 - n / m)) > 1e-9:
                raise EdgeLLMError(f"sparsity {self.sparsity} contradicts pattern {self.pattern} (which means "
                                   f"sparsity {1 - n / m:g})", "give only the pattern")

    def _check_structured(self):
        if self.structure not in STRUCTURES:
            raise EdgeLLMError(f"unknown structure '{self.structure}'", f"use one of: {', '.join(STRUCTURES)}")
        if self.pattern is not None or self.sparsity is not None:
            raise EdgeLLMError("sparsity/pattern are for unstructured pruning, not structure="
                               f"'{self.structure}'", "use ratio= or max_params= / max_bytes=")
        if self.method not in ("wanda", "magnitude"):
            raise EdgeLLMError(f"structured pruning ranks units by 'wanda' (activations) or 'magnitude' "
                               f"(weights), not '{self.method}'", "use method='wanda' or 'magnitude'")
        if self.structure == "depth" and self.method != "wanda":
            raise EdgeLLMError("depth pruning ranks layers by the angular distance between their input and "
                               "output on calibration data; it has no magnitude variant", "use method='wanda'")
        given = [n for n in ("ratio", "max_params", "max_bytes") if getattr(self, n) is not None]
        if len(given) != 1:
            raise EdgeLLMError(f"structured pruning needs exactly one of ratio, max_params, max_bytes (got "
                               f"{', '.join(given) or 'none'})", "e.g. ratio=0.25")
        if self.ratio is not None and not 0.0 < float(self.ratio) < 1.0:
            raise EdgeLLMError(f"ratio {self.ratio} is outside (0, 1)", "use a fraction such as 0.25")
        for name in ("max_params", "max_bytes"):
            v = getattr(self, name)
            if v is not None and int(v) <= 0:
                raise EdgeLLMError(f"{name} must be positive (got {v})", "give the budget for the whole model")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern) if self.pattern else None

    @property
    def effective_sparsity(self) -> float:
        """Fraction of each pruned linear's weights that becomes zero."""
        if self.pattern:
            n, m = parse_pattern(self.pattern)
            return 1 - n / m
        return 0.5 if self.sparsity is None else float(self.sparsity)

    @property
    def calibrated(self) -> bool:
        if self.structure is not None:
            return self.method == "wanda"
        return self.method in CALIBRATED
