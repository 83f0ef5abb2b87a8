"""Transformer-encoder fusion for ONNX Runtime: one fused ``Attention`` per layer instead of ~20 small ops.

A BERT-family classifier traced with PyTorch's SDPA attention leaves a graph that ONNX Runtime's
transformer optimizer cannot match, so attention runs as separate MatMul/Softmax/Where nodes and
dynamic int8 quantizes only the projections. Traced with the *eager* attention (explicit
Q·Kᵀ, mask add, softmax, ·V) the optimizer recognises every block and writes contrib ops:
``EmbedLayerNormalization``, ``Attention`` (QKV in one GEMM), ``SkipLayerNormalization``,
``BiasGelu``. Dynamic int8 then turns ``Attention`` into ``QAttention`` and the embedding into
``QEmbedLayerNormalization``.

Measured on MiniLM-L6 (SST-2, 2 threads, this CPU), int8 vs PyTorch fp32, unfused → fused: 3.89× → 4.39×
at batch 1, 2.03× → 2.00× at batch 32 (GEMM-bound: no change), 59.5 → 23.6 MB (the embedding is int8 too),
accuracy 87.11% → 87.02% (PyTorch 87.56%). The contrib ops are
onnxruntime's own (domain ``com.microsoft``): such graphs run in onnxruntime, not in other ONNX
runtimes. ``bench/classifier_onnx.py`` measures both graphs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..families import family_of


@contextlib.contextmanager
def eager_attention(model):
    """Trace *model* with the eager attention (restored afterwards: the caller's model is not changed)."""
    saved = {id(m.config): (m.config, m.config._attn_implementation) for m in model.modules()
             if hasattr(getattr(m, "config", None), "_attn_implementation")}
    try:
        for c, _ in saved.values():
            c._attn_implementation = "eager"
        yield model
    finally:
        for c, impl in saved.values():
            c._attn_implementation = impl


def fuse_encoder(path: Path, config) -> dict[str, int]:
    """Rewrite the fp32 graph at *path* in place with onnxruntime's transformer fusions, using the recipe
    the family names (``FamilySpec.ort_fusion``: ``bert`` for BERT and RoBERTa); returns the fused op counts.

    >>> fuse_encoder(Path("out/minilm.onnx/model.onnx"), model.config)    # doctest: +SKIP
    {'EmbedLayerNormalization': 1, 'Attention': 6, 'SkipLayerNormalization': 12, 'BiasGelu': 6}
    """
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        opt = optimize_model(str(path), model_type=family_of(config).ort_fusion, num_heads=config.num_attention_heads,
                             hidden_size=config.hidden_size, opt_level=0)
    finally:
        quiet.setLevel(level)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(path))
    return stats
