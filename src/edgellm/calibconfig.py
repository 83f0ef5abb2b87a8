"""``CalibConfig``: the calibration data every calibrated method draws, in one frozen dataclass.

``QuantConfig`` and ``PruneConfig`` hold one as their ``calib`` field, so the text file, the
number of windows, their length and the sampling seed have one default each, stated here. The
CLI reaches the fields as ``--calib-data`` (alias ``--calib``), ``--calib-samples``,
``--calib-seq-len`` (alias ``--calib-len``) and ``--calib-seed`` (alias ``--seed``).
``nest_calib`` maps the older flat keys (``calib: FILE``, ``calib_samples``, ``calib_len``,
``seed``) of recipes and keyword calls onto the nested form; ``config_field`` is the dataclass
field with the help text that generated CLI flags show. Deliberately left out: reading the data
(``data.calibration_windows`` does that).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .data import WIKI_VALID
from .errors import EdgeLLMError

def config_field(default, help: str, **meta):
    """A dataclass field whose *help* (and optional ``aliases``/``metavar``/``choices``) the CLI flags show.

    >>> config_field(8, "weight bits").metadata["help"]
    'weight bits'
    """
    return field(default=default, metadata={"help": help, **meta})


# flat key of older recipes and keyword calls -> CalibConfig field
FLAT_KEYS = {"calib_samples": "samples", "calib_len": "seq_len", "seed": "seed"}


@dataclass(frozen=True)
class CalibConfig:
    """Which calibration windows a method sees: *samples* windows of *seq_len* tokens from *data*.

    >>> CalibConfig(samples=32, seq_len=256).samples
    32
    """

    data: str = field(default=WIKI_VALID, metadata={
        "help": "calibration text; relative names resolve in the data folder (never the test split)",
        "aliases": ("--calib",), "metavar": "FILE"})
    samples: int = field(default=128, metadata={"help": "calibration windows drawn from the text"})
    seq_len: int = field(default=512, metadata={"help": "tokens per calibration window", "aliases": ("--calib-len",)})
    seed: int = field(default=0, metadata={"help": "seed of the window sampling (and AWQ's token subsample)",
                                           "aliases": ("--seed",)})

    def __post_init__(self):
        if not isinstance(self.data, str) or not self.data:
            raise EdgeLLMError(f"calibration data must be a file name (got {self.data!r})", "e.g. wikitext-2/wiki.valid.tokens")
        for name, low in (("samples", 1), ("seq_len", 2), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise EdgeLLMError(f"calibration {name} must be an integer ≥ {low} (got {v!r})",
                                   f"fix --calib-{name.replace('_', '-')}")


def nest_calib(values: dict, where: str = "config") -> dict:
    """*values* with the flat calibration keys folded into one ``calib`` entry (a ``CalibConfig``).

    ``calib`` may be a file name (the old flat form), a dict of ``CalibConfig`` fields or a
    ``CalibConfig``; an unknown key inside a ``calib`` dict raises ``EdgeLLMError``.

    >>> nest_calib({"bits": 4, "calib_samples": 32})["calib"].samples
    32
    """
    out = dict(values)
    flat = {FLAT_KEYS[k]: out.pop(k) for k in list(out) if k in FLAT_KEYS}
    calib = out.pop("calib", None)
    if calib is None and not flat:
        return out
    if isinstance(calib, CalibConfig):
        base = calib.__dict__.copy()
    elif isinstance(calib, str):
        base = {"data": calib}
    elif isinstance(calib, dict):
        known = set(CalibConfig.__dataclass_fields__)
        unknown = sorted(set(calib) - known)
        if unknown:
            raise EdgeLLMError(f"{where}: unknown calibration field(s) {', '.join(unknown)}",
                               f"valid fields: {', '.join(sorted(known))}")
        base = dict(calib)
    elif calib is None:
        base = {}
    else:
        raise EdgeLLMError(f"{where}: calib must be a file name, a mapping or a CalibConfig (got {type(calib).__name__})",
                           "e.g. calib: {samples: 32, seq_len: 512}")
    base.update(flat)
    out["calib"] = CalibConfig(**base)
    return out
