"""Export to ONNX for ONNX Runtime: causal LMs with a KV cache, and sequence classifiers.

The artifact is a folder whose name ends in ``.onnx`` (so ``edgellm eval out/m.onnx`` picks ONNX
Runtime by suffix), holding ``model.onnx``, the tokenizer files, ``edgellm.json`` (what the
runtime needs: task, IO names, cache shapes, weight bytes read per token, how it was made) and
``manifest.json`` (sha256 of every file, so a corrupted artifact is refused on open), both
written through ``edgellm.artifacts``, which owns that folder format.

Causal LMs are exported with flat KV-cache inputs and outputs (``past.{i}.key`` … →
``present.{i}.key`` …, shape [batch, kv_heads, positions, head_dim]) plus ``attention_mask`` and
``position_ids``, so one graph serves prefill (empty past) and token-by-token decode. BERT-family
classifiers are traced with eager attention and fused into onnxruntime's encoder ops
(``onnx_fuse``: ``Attention``, ``SkipLayerNormalization`` …; ``fuse=False`` keeps plain ONNX). Variants:

* ``fp32``: the traced graph as is;
* ``int8``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized
  per call) on MatMuls with constant weights only, so attention's Q·Kᵀ stays fp32;
* ``int4``: 4-bit block-wise weights in ``MatMulNBits`` (onnxruntime's ``MatMulNBitsQuantizer``,
  asymmetric, ``block_size`` 32 by default, int8 compute: ``accuracy_level`` 4).

Tracing uses the TorchScript-based ``torch.onnx.export(dynamo=False)``: with torch 2.13 and
transformers 5.x it handles the cache wrapper below and reproduces the logits (the dynamo
exporter needs per-argument ``dynamic_shapes`` for the flat cache and was not needed).
Deliberately left out: writing edgellm's own 4-bit codes straight into MatMulNBits (packed
edgellm models are dequantized and re-quantized by onnxruntime's RTN quantizer), external
data for models over 2 GB, encoder-decoder models, and batch > 1 decode with padding in the
runtime (the graph supports it, ``OnnxRuntime.generate`` does not use it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts import ONNX, require, write_artifact
from ..errors import EdgeLLMError
from ..families import export_support, family_of
from ..fileio import atomic_dir
from ..models import Loaded, load
from ..runtimes.onnxrt import OnnxRuntime
from ..runtimes.torch import TorchRuntime
from .onnx_fuse import eager_attention, fuse_encoder

VARIANTS = ("fp32", "int8", "int4")
# the families exported and tested come from the family registry (``families.export_support("onnx")``);
# other families may work but are refused rather than guessed


@dataclass(frozen=True)
class OnnxExportConfig:
    """How to export: *variant* fp32 | int8 | int4; *block_size* for int4; *opset* of the graph.

    >>> OnnxExportConfig(variant="int4", block_size=32).variant
    'int4'
    """

    variant: str = "fp32"
    block_size: int = 32
    symmetric: bool = False        # int4 only: asymmetric (scale + zero point) keeps more accuracy
    accuracy_level: int = 4        # MatMulNBits compute: 4 = int8 activations (fast on CPUs), 0 = fp32
    opset: int = 17
    fuse: bool = True              # classifiers: fuse encoder blocks for onnxruntime (``onnx_fuse``)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise EdgeLLMError(f"unknown ONNX variant '{self.variant}'", f"use one of: {', '.join(VARIANTS)}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise EdgeLLMError(f"int4 block size must be a power of two ≥ 16 (got {self.block_size})", "use 32, 64 or 128")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise EdgeLLMError(f"accuracy_level must be 0-4 (got {self.accuracy_level})", "use 4 (int8 compute) or 0")


def task_of(model) -> str:
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return "causal-lm"
    if name.endswith("ForSequenceClassification"):
        return "classification"
    return "encoder"


def check_supported(model, fmt: str, supported: dict[str, tuple[str, ...]]) -> str:
    """The model's task, or an EdgeLLMError listing what *fmt* supports."""
    task, mtype = task_of(model), getattr(model.config, "model_type", "?")
    if mtype not in supported.get(task, ()):
        listed = "; ".join(f"{t}: {', '.join(m)}" for t, m in supported.items())
        raise EdgeLLMError(f"{fmt} export does not support {type(model).__name__} (model_type '{mtype}', task {task})",
                           f"supported: {listed}")
    return task


def plain_model(model):
    """Replace edgellm's packed linears (modules with ``unpack()``) by fp32 ``nn.Linear``s, on a copy."""
    import copy

    packed = [n for n, m in model.named_modules() if callable(getattr(m, "unpack", None)) and n]
    if not packed:
        return model
    model = copy.deepcopy(model)
    for name in packed:
        mod = model.get_submodule(name)
        W = dequantize_unpacked(mod.unpack())                          # W: [out, in]
        bias = getattr(mod, "bias", None)
        lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=bias is not None)
        lin.weight.data.copy_(W)
        if bias is not None:
            lin.bias.data.copy_(bias.float())
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, lin)
    return model


def dequantize_unpacked(q) -> torch.Tensor:
    """fp32 weights from a ``QuantizedWeight`` (codes [out, in], scale/zero [out, in/group_size])."""
    if callable(getattr(q, "dequantize", None)):
        return q.dequantize().float()
    codes = q.codes.float()
    out_f, in_f = codes.shape
    g = q.group_size if q.group_size and q.group_size > 0 else in_f
    n_groups = -(-in_f // g)
    scale = q.scale.float().reshape(out_f, n_groups).repeat_interleave(g, dim=1)[:, :in_f]
    zero = q.zero
    zero = torch.zeros_like(scale) if zero is None else zero.float().reshape(out_f, n_groups).repeat_interleave(g, dim=1)[:, :in_f]
    return (codes - zero) * scale


class CausalLMWithFlatCache(torch.nn.Module):
    """``(input_ids, attention_mask, position_ids, past.0.key, past.0.value, …) -> (logits, present…)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        flat = []
        for layer in out.cache.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def cache_shape(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder config."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv, head_dim


def _export_causal_lm(model, path: Path, opset: int) -> dict:
    n_layers, kv, hd = cache_shape(model.config)
    past_names = [f"past.{i}.{kv_}" for i in range(n_layers) for kv_ in ("key", "value")]
    present_names = [n.replace("past.", "present.") for n in past_names]
    P, T = 3, 4                                     # sample lengths; both axes are dynamic
    ids = torch.randint(0, model.config.vocab_size, (1, T))
    past = [torch.zeros(1, kv, P, hd) for _ in past_names]
    mask = torch.ones(1, P + T, dtype=torch.long)
    pos = torch.arange(P, P + T).view(1, -1)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
           "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    dyn.update({n: {0: "batch", 2: "past"} for n in past_names})
    dyn.update({n: {0: "batch", 2: "total"} for n in present_names})
    _trace(CausalLMWithFlatCache(model).eval(), (ids, mask, pos, *past), path,
           ["input_ids", "attention_mask", "position_ids", *past_names], ["logits", *present_names], dyn, opset)
    return {"task": "causal-lm", "inputs": ["input_ids", "attention_mask", "position_ids", *past_names],
            "outputs": ["logits", *present_names], "num_layers": n_layers, "num_kv_heads": kv, "head_dim": hd}


class _Classifier(torch.nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def _export_classifier(model, tokenizer, path: Path, opset: int, fuse: bool = True) -> dict:
    """Trace the classifier (eager attention when fusing, see ``onnx_fuse``), then fuse encoder blocks."""
    enc = tokenizer(["a short example", "and a second, longer example sentence"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    dyn = {n: {0: "batch", 1: "seq"} for n in names}
    dyn["logits"] = {0: "batch"}
    fuse = fuse and family_of(model).ort_fusion is not None
    with eager_attention(model) if fuse else contextlib.nullcontext():
        _trace(_Classifier(model, names).eval(), tuple(enc[n] for n in names), path, names, ["logits"], dyn, opset)
    labels = {str(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    return {"task": "classification", "inputs": names, "outputs": ["logits"], "num_labels": model.config.num_labels,
            "id2label": labels, "fused": fuse_encoder(path, model.config) if fuse else {}}


def _trace(module, args, path, input_names, output_names, dynamic_axes, opset):
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")               # TracerWarnings on shape branches that are fixed per graph
        try:
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - the tracer raises many types; surface one clear line
            raise EdgeLLMError(f"ONNX export of {type(module.model).__name__} failed: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}", "report it with the model's config") from e


def quantize_graph(src: Path, dst: Path, cfg: OnnxExportConfig) -> None:
    """Write the *cfg.variant* of the fp32 graph *src* to *dst*."""
    import onnx

    if cfg.variant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # fused encoders also quantize Attention (→ QAttention) and EmbedLayerNormalization; the contrib
        # ops have no ONNX shape inference, hence the default type for the tensors they produce
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm", "Attention", "EmbedLayerNormalization"],
                         weight_type=QuantType.QInt8, per_channel=False,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    elif cfg.variant == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                 accuracy_level=cfg.accuracy_level)
        q.process()
        onnx.save_model(q.model.model, str(dst))
    else:
        raise ValueError(cfg.variant)


def graph_weight_bytes(path: Path) -> int:
    """Bytes of initializers read per forward: all of them, except tables only gathered from (embeddings)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path), load_external_data=True).graph
    users: dict[str, set[str]] = {}
    for node in g.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in g.initializer:
        if users.get(init.name) == {"Gather"} and len(init.dims) == 2:
            continue                                   # an embedding table: one row per token is read
        total += int(np.prod(init.dims, dtype=np.int64)) * numpy_helper.to_array(init).itemsize
    return total


def fake_quantized(loaded, cfg: OnnxExportConfig):
    """A PyTorch copy of *loaded* holding the weights the *cfg.variant* graph holds (the verification reference).

    int8: per-tensor symmetric int8 (``quantize_dynamic``'s QInt8 weights); int4: per-block min/max
    4-bit along the input dimension, zero included in the range (``MatMulNBits`` RTN). Every
    ``nn.Linear`` is quantized, the output head too (untied from the fp32 embedding table).
    """
    import copy

    net = copy.deepcopy(plain_model(loaded.model)).float().eval()
    for mod in net.modules():
        if isinstance(mod, torch.nn.Linear):
            W = mod.weight.detach()                                          # W: [out, in]
            Wq = _fq_int8(W) if cfg.variant == "int8" else _fq_block4(W, cfg.block_size, cfg.symmetric)
            mod.weight = torch.nn.Parameter(Wq, requires_grad=False)
    return Loaded(net, loaded.tokenizer, loaded.meta)


def _fq_int8(W: torch.Tensor) -> torch.Tensor:
    scale = W.abs().max().clamp_min(1e-12) / 127.0
    return torch.clamp(torch.round(W / scale), -127, 127) * scale


def _fq_block4(W: torch.Tensor, block: int, symmetric: bool) -> torch.Tensor:
    out_f, in_f = W.shape
    pad = (-in_f) % block
    Wb = torch.nn.functional.pad(W, (0, pad)).view(out_f, -1, block)
    if symmetric:
        absmax = Wb.abs().amax(-1, keepdim=True)
        scale = (absmax / 8).clamp_min(1e-12)
        q = torch.clamp(torch.round(Wb / scale), -8, 7)
        deq = q * scale
    else:
        lo = Wb.amin(-1, keepdim=True).clamp_max(0)
        hi = Wb.amax(-1, keepdim=True).clamp_min(0)
        scale = ((hi - lo) / 15).clamp_min(1e-12)
        zp = torch.clamp(torch.round(-lo / scale), 0, 15)
        deq = (torch.clamp(torch.round(Wb / scale) + zp, 0, 15) - zp) * scale
    return deq.view(out_f, -1)[:, :in_f].contiguous()


CLASSIFY_PROMPTS = ("a gripping, beautifully acted film", "the plot is thin and the jokes fall flat",
                    "an uneven but often charming comedy", "i hated every minute of it", "a masterpiece", "dull")


def verify_classifier(tmp: Path, loaded, variant: str, threads: int | None = None) -> dict:
    """Class probabilities of the ONNX classifier against PyTorch on fixed sentences; raises if out of tolerance."""
    limit = 1e-4 if variant == "fp32" else 0.15
    ref = TorchRuntime(loaded, device="cpu", threads=threads).classify(list(CLASSIFY_PROMPTS)).softmax(-1)
    art = OnnxRuntime(tmp, threads=threads).classify(list(CLASSIFY_PROMPTS)).softmax(-1)
    diff = (ref - art).abs().max().item()
    agree = (ref.argmax(-1) == art.argmax(-1)).float().mean().item()
    report = {"n_sentences": len(CLASSIFY_PROMPTS), "max_prob_diff": diff, "label_agreement": agree,
              "tolerance": {"max_prob_diff": limit}, "passed": diff <= limit}
    if diff > limit:
        raise EdgeLLMError(f"export verification failed: class probabilities differ by {diff:.3g} (limit {limit:g}); "
                           "no artifact was written", "check the variant, or report the model")
    return report


def verify_tolerance(variant: str = "fp32", **_) -> str:
    """The named verification tolerance (``export.verify.TOLERANCES``) for an ONNX *variant*.

    fp32 must match PyTorch as fp32 does; int8/int4 are compared with a PyTorch copy holding the
    same quantized weights, and differ by the runtime's 8-bit activation quantization.
    """
    return "f32" if variant == "fp32" else "int8-act"


def export_onnx(model, out, *, variant: str = "fp32", force: bool = False, block_size: int = 32,
                verify=None, threads: int | None = None, **config) -> Path:
    """Export *model* (a spec or ``Loaded``) to the ONNX artifact folder *out*.

    *verify* is ``export.verify``'s verifier, ``verify(artifact, reference, source=None)``; it
    runs on the temporary folder before it is moved into place, so a failure leaves nothing.
    Classifiers are verified here instead (class probabilities on fixed sentences).

    >>> export_onnx("smollm2-135m", "out/smollm2-int8.onnx", variant="int8")   # doctest: +SKIP
    PosixPath('out/smollm2-int8.onnx')
    """
    return export_onnx_report(model, out, variant=variant, force=force, block_size=block_size, verify=verify,
                              threads=threads, **config)[0]


def export_onnx_report(model, out, *, variant: str = "fp32", force: bool = False, block_size: int = 32,
                       verify=None, threads: int | None = None, **config) -> tuple[Path, dict]:
    """``export_onnx`` returning ``(path, report)``, as ``edgellm.exporters.export`` dispatches it."""
    cfg = OnnxExportConfig(variant=variant, block_size=block_size, **config)
    require(ONNX)
    loaded = model if isinstance(model, Loaded) else load(model)
    task = check_supported(loaded.model, "ONNX", export_support("onnx"))
    if loaded.tokenizer is None:
        raise EdgeLLMError("the model has no tokenizer to ship with the ONNX graph", "export a folder with a tokenizer")
    net = plain_model(loaded.model).float().eval()
    out = Path(out)
    report: dict = {"variant": cfg.variant}
    with atomic_dir(out, force=force, inputs=(loaded.meta.source,)) as tmp:
        fp32 = tmp / (ONNX.main if cfg.variant == "fp32" else "fp32.onnx")
        if task == "causal-lm":
            info = _export_causal_lm(net, fp32, cfg.opset)
        else:
            info = _export_classifier(net, loaded.tokenizer, fp32, cfg.opset, cfg.fuse)
        if cfg.variant != "fp32":
            quantize_graph(fp32, tmp / ONNX.main, cfg)
            fp32.unlink()
        loaded.tokenizer.save_pretrained(tmp)
        c = net.config
        info.update({
            "variant": cfg.variant, "config": _asdict(cfg),
            "architecture": type(net).__name__, "model_type": c.model_type, "vocab_size": c.vocab_size,
            "max_positions": getattr(c, "max_position_embeddings", None),
            "eos_token_id": getattr(c, "eos_token_id", None),
            "weight_bytes": graph_weight_bytes(tmp / ONNX.main),
            "source": loaded.meta.name, "source_edgellm": loaded.meta.edgellm or {},
        })

        def check(folder: Path) -> dict:         # on the complete folder, before the manifest seals it
            if task == "classification":
                return verify_classifier(folder, loaded, cfg.variant, threads)
            if cfg.variant == "fp32":
                return verify(folder, loaded)
            return verify(folder, fake_quantized(loaded, cfg), source=loaded)

        info = write_artifact(tmp, ONNX, info, check if verify is not None else None)
    report.update({k: info[k] for k in ("verification", "weight_bytes") if k in info})
    return out, report


def _asdict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
