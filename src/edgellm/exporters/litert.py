"""Export to LiteRT (TFLite): causal LMs with an explicit KV cache, and sequence classifiers.

The artifact is a folder whose name ends in ``.tflite`` holding ``model.tflite``, the tokenizer,
``edgellm.json`` and ``manifest.json`` (written through ``edgellm.artifacts``). Each signature is a
``torch.export`` program made here, in the main environment, then converted by ``litert-torch`` in
its own environment (``exporters.litert_env``: it cannot be installed beside edgellm) and verified
on the ``ai-edge-litert`` interpreter (``runtimes.litert``) before the folder is moved into place.

Causal LMs (the shape of litert-torch's generative examples, static shapes throughout): signatures
``prefill_<L>`` for L in {``prefill_len``, ``max_len``} take ``tokens [1, L]``, ``input_pos [L]``
and the caches ``k_i, v_i [1, kv_heads, max_len, head_dim]``; ``decode`` takes ``[1, 1]``, ``[1]``
and the caches. Each returns the logits ``[1, T, vocab]`` and only the new cache rows
``[1, kv_heads, T, head_dim]``, which the runtime writes into its own cache at ``input_pos`` (the
graph never returns the whole cache, so a step copies the rows it made, not the cache). Attention
reads the cache with the new rows written in (``index_copy``) under the mask ``j ≤ pos``, so a
shorter prompt padded to L leaves masked garbage that decode overwrites before it is read.
``ExplicitCacheLM`` reuses the Hugging Face modules through the family registry, as
``exporters.executorch.StaticCacheLM`` does (llama, qwen2, qwen3, gemma).
Classifiers (BERT family): one signature ``classify_b<B>`` per batch size (1 and ``batch_size``)
over ``[B, seq_len]`` ids, attention mask and token types; the runtime pads to them.
Variants (``litert_convert``): ``fp32``; ``int8`` / ``int4`` dynamic-range; ``w8`` weight-only int8. The
token embedding table is quantized too unless ``quantize_embeddings`` is off (then it stays fp32, as in
the ONNX and ExecuTorch exports, but ``ai-edge-quantizer`` leaves fp32 buffers behind: a tiny tied
Llama's int8 file is 655 KB against 528 KB at fp32 and 225 KB with the table quantized). Quantized variants are verified against a
PyTorch copy holding the file's weights (``litert_verify.reference_for``) under the tolerance ONNX
and ExecuTorch use for the same arithmetic (``verify_tolerance``).
Deliberately left out: dynamic shapes, sliding-window caches, GPU/NPU delegates, and writing
edgellm's own quantized codes (packed models are dequantized, then re-quantized by the converter).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..artifacts import LITERT, require, write_artifact
from ..calibconfig import config_field
from ..errors import EdgeLLMError
from ..families import export_support, family_of, find_blocks, get_path, module
from ..fileio import atomic_dir
from ..models import Loaded, load
from .litert_env import run_converter
from .litert_verify import reference_for, verify_litert_classifier
from .onnx import cache_shape, check_supported, plain_model

VARIANTS = ("fp32", "int8", "int4", "w8")


@dataclass(frozen=True)
class LiteRTExportConfig:
    """*variant* fp32 | int8 / int4 (dynamic) | w8 (weight-only); causal LMs: *max_len*, *prefill_len*; classifiers: *seq_len*, *batch_size*.

    >>> LiteRTExportConfig(variant="int8", max_len=256).prefill_len
    128
    """

    variant: str = config_field("fp32", "LiteRT: fp32 | int8 | int4 (dynamic-range) | w8 (weight-only)")
    group_size: int = config_field(32, "int4: weights per quantization block")
    max_len: int = config_field(512, "KV-cache positions (longest sequence)")
    prefill_len: int = config_field(128, "LiteRT: the short prefill signature's length (a max_len one is always added)")
    seq_len: int = config_field(128, "LiteRT classifiers: tokens per sentence (padded/truncated)")
    batch_size: int = config_field(32, "LiteRT classifiers: the batched signature's batch (besides 1)")
    quantize_embeddings: bool = config_field(True, "LiteRT int8/int4/w8: quantize the token embedding table too "
                                             "(--no-quantize-embeddings keeps it fp32, as ONNX/ExecuTorch do, "
                                             "in a larger file)")
    quantize_head_input: bool = config_field(False, "LiteRT int8 causal LMs: round the output head's input to int8 "
                                             "at run time like every other FC op (faster; by default the head "
                                             "keeps int8 weights with fp32 input: SmolLM2's per-row rounding of "
                                             "it alone puts the file outside the int8-act verification limits)")

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise EdgeLLMError(f"unknown LiteRT variant '{self.variant}'", f"use one of: {', '.join(VARIANTS)}")
        if self.group_size < 16 or self.group_size & (self.group_size - 1):
            raise EdgeLLMError(f"int4 group size must be a power of two ≥ 16 (got {self.group_size})", "use 32 or 64")
        if not 8 <= self.max_len <= 8192:
            raise EdgeLLMError(f"max_len must be between 8 and 8192 (got {self.max_len})", "use e.g. 512 or 1024")
        if not 1 <= self.prefill_len:
            raise EdgeLLMError(f"prefill_len must be ≥ 1 (got {self.prefill_len})", "use e.g. 32 or 128")
        if not 8 <= self.seq_len <= 4096 or not 1 <= self.batch_size <= 1024:
            raise EdgeLLMError(f"seq_len {self.seq_len} / batch_size {self.batch_size} out of range",
                               "use seq_len 8-4096 and batch_size 1-1024")


class ExplicitCacheLM(torch.nn.Module):
    """``forward(tokens [1, T], input_pos [T], k_0, v_0, …) -> (logits [1, T, V], k_new_0, v_new_0, …)``."""

    def __init__(self, model, max_len: int):
        super().__init__()
        self.model = model
        self.n_layers, self.kv, self.hd = cache_shape(model.config)
        self.rep = model.config.num_attention_heads // self.kv
        self.spec = family_of(model)
        self.max_len = max_len

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, *caches: torch.Tensor):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        s, T = self.spec, tokens.shape[1]
        part = lambda root, role: get_path(root, s.role(role))  # noqa: E731 - a block's q, k, ..., norms
        h = module(self.model, "embed")(tokens)                                 # [1, T, hidden]
        cos, sin = module(self.model, "rotary")(h, input_pos.view(1, -1))
        mask = torch.arange(self.max_len).view(1, -1) <= input_pos.view(-1, 1)  # [T, max_len]
        mask = mask.repeat(self.rep, 1)                                        # [rep*T, max_len]
        new = []
        for i, layer in enumerate(find_blocks(self.model)[1]):
            x = part(layer, "input_norm")(h)
            q = part(layer, "q")(x).view(1, T, self.kv * self.rep, self.hd)     # [1, T, H, hd]
            k = part(layer, "k")(x).view(1, T, self.kv, self.hd)
            if s.q_norm is not None:                                            # Qwen3: RMSNorm per head, before rotary
                q, k = part(layer, "q_norm")(q), part(layer, "k_norm")(k)
            v = part(layer, "v")(x).view(1, T, self.kv, self.hd).transpose(1, 2)  # [1, kv, T, hd]
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
            k = k.transpose(1, 2)
            k_all = caches[2 * i].index_copy(2, input_pos, k)                  # [1, kv, max_len, hd]
            v_all = caches[2 * i + 1].index_copy(2, input_pos, v)
            new += [k, v]
            q = q.view(1, T, self.kv, self.rep, self.hd).permute(0, 2, 3, 1, 4).reshape(1, self.kv, self.rep * T, self.hd)
            o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
            o = o.view(1, self.kv, self.rep, T, self.hd).permute(0, 3, 1, 2, 4).reshape(1, T, -1)
            h = h + part(layer, "o")(o)
            h = h + get_path(layer, s.mlp)(part(layer, "post_attention_norm")(h))
        return (module(self.model, "lm_head")(module(self.model, "final_norm")(h)), *new)


class _Classifier(torch.nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def _export_program(mod: torch.nn.Module, args: tuple, path: Path) -> None:
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(mod, args, strict=False)
        except Exception as e:  # noqa: BLE001 - torch.export raises many types; surface one line
            raise EdgeLLMError(f"torch.export for LiteRT failed: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}", "report it with the model's config") from e
    torch.export.save(ep, str(path))


def _lm_signatures(net, cfg: LiteRTExportConfig, work: Path) -> tuple[list[dict], dict]:
    n_layers, kv, hd = cache_shape(net.config)
    wrapper = ExplicitCacheLM(net, cfg.max_len).eval()
    caches = tuple(torch.zeros(1, kv, cfg.max_len, hd) for _ in range(2 * n_layers))
    sigs = []
    for name, T in [(f"prefill_{L}", L) for L in sorted({min(cfg.prefill_len, cfg.max_len), cfg.max_len})] + [("decode", 1)]:
        path = work / f"{name}.pt2"
        _export_program(wrapper, (torch.zeros(1, T, dtype=torch.long), torch.arange(T), *caches), path)
        sigs.append({"name": name, "program": str(path), "length": T})
    info = {"task": "causal-lm", "max_positions": cfg.max_len, "num_layers": n_layers, "num_kv_heads": kv, "head_dim": hd,
            "prefill_lengths": [s["length"] for s in sigs if s["name"] != "decode"]}
    return sigs, info


def _classifier_signatures(net, tokenizer, cfg: LiteRTExportConfig, work: Path) -> tuple[list[dict], dict]:
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer("a", return_tensors="pt")]
    wrapper = _Classifier(net, names).eval()
    sigs = []
    for B in sorted({1, cfg.batch_size}):
        path = work / f"classify_b{B}.pt2"
        _export_program(wrapper, tuple(torch.ones(B, cfg.seq_len, dtype=torch.long) for _ in names), path)
        sigs.append({"name": f"classify_b{B}", "program": str(path), "batch": B})
    labels = {str(k): v for k, v in (getattr(net.config, "id2label", None) or {}).items()}
    info = {"task": "classification", "inputs": names, "seq_len": cfg.seq_len, "batch_sizes": [s["batch"] for s in sigs],
            "num_labels": net.config.num_labels, "id2label": labels, "max_positions": cfg.seq_len}
    return sigs, info


def verify_tolerance(variant: str = "fp32", **_) -> str:
    """The named verification tolerance (``export.verify.TOLERANCES``) for a LiteRT *variant*.

    fp32 and weight-only w8 compute in fp32 on the same weights as their reference
    (``litert_verify.reference_for``); dynamic int8/int4 also quantize activations to 8 bits.
    """
    return {"fp32": "f32", "w8": "f16"}.get(variant, "int8-act")


def export_litert(model, out, *, force: bool = False, verify=None, threads: int | None = None, **config) -> Path:
    """Export *model* (a spec or ``Loaded``) to the LiteRT artifact folder *out*.

    >>> export_litert("smollm2-135m", "out/smollm2-int8.tflite", variant="int8")   # doctest: +SKIP
    PosixPath('out/smollm2-int8.tflite')
    """
    return export_litert_report(model, out, force=force, verify=verify, threads=threads, **config)[0]


def export_litert_report(model, out, *, force: bool = False, verify=None, threads: int | None = None,
                         **config) -> tuple[Path, dict]:
    """``export_litert`` returning ``(path, report)``, as ``edgellm.exporters.export`` dispatches it."""
    import copy
    import time

    cfg = LiteRTExportConfig(**config)
    require(LITERT)
    loaded = model if isinstance(model, Loaded) else load(model)
    task = check_supported(loaded.model, "LiteRT", export_support("litert"))
    c = loaded.model.config
    if task == "causal-lm" and getattr(c, "sliding_window", None) and getattr(c, "use_sliding_window", True):
        raise EdgeLLMError("LiteRT export does not support sliding-window attention", "use a model without it")
    longest = getattr(c, "max_position_embeddings", None)
    if task == "causal-lm" and longest and cfg.max_len > longest:
        raise EdgeLLMError(f"max_len {cfg.max_len} is longer than the model's {longest} positions: the static cache "
                           "would hold positions the model was never trained on", f"use --max-len {longest} or less")
    if loaded.tokenizer is None:
        raise EdgeLLMError("the model has no tokenizer to ship with the LiteRT model", "export a folder with a tokenizer")
    net = copy.deepcopy(plain_model(loaded.model)).float().eval().requires_grad_(False)   # never touch the input
    out = Path(out)
    report: dict = {"variant": cfg.variant}
    with tempfile.TemporaryDirectory(prefix="edgellm-litert-") as work_dir, \
            atomic_dir(out, force=force, inputs=(loaded.meta.source,)) as tmp:
        work = Path(work_dir)
        t0 = time.perf_counter()
        if task == "causal-lm":
            sigs, info = _lm_signatures(net, cfg, work)
        else:
            sigs, info = _classifier_signatures(net, loaded.tokenizer, cfg, work)
        export_seconds = time.perf_counter() - t0
        job = {"signatures": sigs, "out": str(tmp / LITERT.main), "variant": cfg.variant, "group_size": cfg.group_size,
               "quantize_embeddings": cfg.quantize_embeddings, "report": str(work / "report.json"),
               "weight_only_rows": c.vocab_size if task == "causal-lm" and cfg.variant == "int8"
               and not cfg.quantize_head_input else None}
        (work / "job.json").write_text(json.dumps(job))
        run_converter(work / "job.json")
        conv = json.loads((work / "report.json").read_text())
        loaded.tokenizer.save_pretrained(tmp)
        info.update({
            "variant": cfg.variant, "config": asdict(cfg), "signatures": [s["name"] for s in sigs],
            "architecture": type(net).__name__, "model_type": c.model_type, "vocab_size": c.vocab_size,
            "eos_token_id": getattr(c, "eos_token_id", None),
            "weight_bytes": tflite_weight_bytes(tmp / LITERT.main),
            "source": loaded.meta.name, "source_edgellm": loaded.meta.edgellm or {},
            "converter": {**conv, "export_seconds": export_seconds},
        })

        def check(folder: Path) -> dict:         # on the complete folder, before the manifest seals it
            if task == "classification":
                return verify_litert_classifier(folder, loaded, reference_for(loaded, cfg), cfg.variant, threads)
            if cfg.variant == "fp32":
                return verify(folder, loaded)
            return verify(folder, reference_for(loaded, cfg), source=loaded)

        info = write_artifact(tmp, LITERT, info, check if verify is not None else None)
    report.update({k: info[k] for k in ("verification", "weight_bytes", "converter") if k in info})
    return out, report


def tflite_weight_bytes(path: Path) -> int:
    """Bytes of constant weights the compute ops of the first signature read per call, as the interpreter lists them.

    Every constant input of an op counts once, at the width the op reads it (a weight-only tensor
    behind a DEQUANTIZE counts at fp32, since LiteRT dequantizes constants once at load); the
    embedding table read by EMBEDDING_LOOKUP/GATHER does not (one row per token). The Python API
    reports 4-bit tensors as int8, so int4 weights are counted at one byte each.
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    produced = {i: op for op in ops for i in op["outputs"]}
    inputs = {d["index"] for d in it.get_input_details()}
    seen, total = set(), 0
    for op in ops:
        if op["op_name"] in ("DEQUANTIZE", "EMBEDDING_LOOKUP", "GATHER"):
            continue
        for i in op["inputs"]:
            if i < 0 or i in seen or i in inputs:
                continue
            src = produced.get(i)
            if src is not None and not (src["op_name"] == "DEQUANTIZE" and src["inputs"][0] not in produced):
                continue                                        # an activation, not a constant
            seen.add(i)
            t = details[i]
            total += int(np.prod(t["shape"], dtype=np.int64)) * np.dtype(t["dtype"]).itemsize
    return total


__all__ = ["ExplicitCacheLM", "LiteRTExportConfig", "VARIANTS", "export_litert", "export_litert_report",
           "verify_tolerance"]
