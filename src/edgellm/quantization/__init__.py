"""Quantization: min-max/RTN, GPTQ and AWQ onto packed integer weights, run on integer kernels.

>>> import edgellm
>>> m = edgellm.load("minilm-l6", task="classification")           # doctest: +SKIP
>>> m, res = edgellm.quantize(m, bits=8)                             # doctest: +SKIP
>>> m, res = quantize(m, QuantConfig(method="gptq", bits=4, group_size=32))   # doctest: +SKIP

Modules: ``config`` (QuantConfig), ``primitives`` (grids, codes, the QuantizedWeight record),
``rtn``, ``gptq``, ``awq``, ``pack`` (bit packing), ``linear`` (QuantizedLinear + kernels),
``embedding`` (8-bit embeddings/LM head), ``storage`` (save/load folders), ``core`` (the driver).
"""

from .config import QuantConfig
from .core import QuantResult, quantize, select_linears
from .linear import QuantizedLinear, quantized_linears
from .primitives import QuantizedWeight

__all__ = ["QuantConfig", "QuantResult", "QuantizedLinear", "QuantizedWeight", "quantize", "quantized_linears",
           "select_linears", "save_quantized", "load_quantized_model"]


def save_quantized(loaded, out, force: bool = False):
    """Save a quantized ``Loaded`` model as a packed folder (see ``storage.save_quantized``)."""
    from .storage import save_quantized as _save

    return _save(loaded, out, force=force)


def load_quantized_model(folder, config_dict, task, dtype):
    from .storage import load_quantized_model as _load

    return _load(folder, config_dict, task, dtype)

