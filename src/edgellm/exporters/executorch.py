"""Export to ExecuTorch: a ``.pte`` program lowered to the XNNPACK delegate, with a static KV cache.

The artifact is a folder whose name ends in ``.pte`` holding ``model.pte``, the tokenizer,
``edgellm.json`` (cache length, vocabulary, weight bytes read per token, how it was made) and
``manifest.json``, written through ``edgellm.artifacts`` (which owns that folder format). The
program has one method, ``forward(input_ids [1, T], input_pos [T]) -> logits [1, T, vocab]``,
with T dynamic from 1 to ``max_len``: prefill and decode share it.

The KV cache is a set of mutable buffers ``[1, kv_heads, max_len, head_dim]`` per layer, written
at ``input_pos`` with ``index_copy_`` (ExecuTorch keeps mutated buffers in the program's state,
as its own llama export does); attention reads the whole buffer under a mask ``j ≤ pos``, so a
new prompt at position 0 simply overwrites the old one. Grouped-query attention folds the query
heads of one KV head into the sequence axis instead of copying the cache per head.

``StaticCacheLM`` reuses the Hugging Face model's own modules (embeddings, rotary embedding,
projections, norms, MLPs) and only rewrites the attention glue around the cache, so it holds for
the Llama family (llama, qwen2, mistral without sliding window), for qwen3 (its per-head Q/K
RMSNorm is applied before rotary) and for gemma (its embedding module scales by √hidden, its
norms and GELU MLP are its own modules). Variants (torchao, as
ExecuTorch's llama export does): ``fp32``; ``int8`` = 8-bit per-channel weights with dynamic
8-bit activations (8da8w); ``int4`` = 4-bit weights in groups of ``group_size`` with dynamic
8-bit activations (8da4w). The embedding table stays fp32.
Deliberately left out: sequence classifiers, batch > 1, sliding-window caches, and writing
edgellm's own quantized codes (packed models are dequantized, then re-quantized by torchao).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..artifacts import EXECUTORCH, require, write_artifact
from ..errors import EdgeLLMError
from ..families import export_support, family_of, find_blocks, get_path, module
from ..fileio import atomic_dir
from ..models import Loaded, load
from .onnx import cache_shape, check_supported, plain_model

VARIANTS = ("fp32", "int8", "int4")


@dataclass(frozen=True)
class ExecuTorchExportConfig:
    """*variant* fp32 | int8 (8da8w) | int4 (8da4w); *group_size* for int4; *max_len* = KV-cache positions.

    >>> ExecuTorchExportConfig(variant="int4", group_size=32, max_len=512).max_len
    512
    """

    variant: str = "fp32"
    group_size: int = 32
    max_len: int = 512

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise EdgeLLMError(f"unknown ExecuTorch variant '{self.variant}'", f"use one of: {', '.join(VARIANTS)}")
        if self.group_size < 16 or self.group_size & (self.group_size - 1):
            raise EdgeLLMError(f"int4 group size must be a power of two ≥ 16 (got {self.group_size})", "use 32 or 64")
        if not 8 <= self.max_len <= 32768:
            raise EdgeLLMError(f"max_len must be between 8 and 32768 (got {self.max_len})", "use e.g. 512 or 1024")


class StaticCacheLM(torch.nn.Module):
    """``forward(input_ids [1, T], input_pos [T]) -> logits [1, T, V]`` over a Llama-family model."""

    def __init__(self, model, max_len: int):
        super().__init__()
        self.model = model
        self.n_layers, self.kv, self.hd = cache_shape(model.config)
        self.rep = model.config.num_attention_heads // self.kv
        self.spec = family_of(model)     # where embeddings, blocks, projections and norms live
        self.max_len = max_len
        for i in range(self.n_layers):
            self.register_buffer(f"k_cache_{i}", torch.zeros(1, self.kv, max_len, self.hd), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(1, self.kv, max_len, self.hd), persistent=False)

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        s, T = self.spec, input_ids.shape[1]
        part = lambda root, role: get_path(root, s.role(role))  # noqa: E731 - a block's q, k, ..., norms
        h = module(self.model, "embed")(input_ids)                             # [1, T, hidden]
        cos, sin = module(self.model, "rotary")(h, input_pos.view(1, -1))
        mask = torch.arange(self.max_len).view(1, -1) <= input_pos.view(-1, 1)  # [T, max_len]
        mask = mask.repeat(self.rep, 1)                                        # [rep*T, max_len]
        for i, layer in enumerate(find_blocks(self.model)[1]):
            x = part(layer, "input_norm")(h)
            q = part(layer, "q")(x).view(1, T, self.kv * self.rep, self.hd)     # [1, T, H, hd]
            k = part(layer, "k")(x).view(1, T, self.kv, self.hd)
            if s.q_norm is not None:                                            # Qwen3: RMSNorm per head, before rotary
                q, k = part(layer, "q_norm")(q), part(layer, "k_norm")(k)
            v = part(layer, "v")(x).view(1, T, self.kv, self.hd).transpose(1, 2)  # [1, kv, T, hd]
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            k_cache.index_copy_(2, input_pos, k.transpose(1, 2))
            v_cache.index_copy_(2, input_pos, v)
            # the query heads of one kv head side by side on the sequence axis: [1, kv, rep*T, hd]
            q = q.view(1, T, self.kv, self.rep, self.hd).permute(0, 2, 3, 1, 4).reshape(1, self.kv, self.rep * T, self.hd)
            o = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)
            o = o.view(1, self.kv, self.rep, T, self.hd).permute(0, 3, 1, 2, 4).reshape(1, T, -1)
            h = h + part(layer, "o")(o)
            h = h + get_path(layer, s.mlp)(part(layer, "post_attention_norm")(h))
        return module(self.model, "lm_head")(module(self.model, "final_norm")(h))


def quantize_linears(model, cfg: ExecuTorchExportConfig) -> None:
    """8da8w / 8da4w on every nn.Linear whose input size the group divides (torchao, in place)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    gs = 0 if cfg.variant == "int8" else cfg.group_size

    def wanted(m, fqn):
        return isinstance(m, torch.nn.Linear) and (gs == 0 or m.weight.shape[1] % gs == 0)

    qcfg = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8 if cfg.variant == "int8" else torch.int4,
                                                 weight_granularity=PerAxis(0) if gs == 0 else PerGroup(gs))
    with torch.no_grad():
        quantize_(model, qcfg, filter_fn=wanted)


def lower(module: StaticCacheLM, vocab_size: int) -> bytes:
    """torch.export with a dynamic sequence length, XNNPACK partitioning, ExecuTorch program bytes."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    T = min(8, module.max_len)
    ids = torch.randint(0, vocab_size, (1, T))
    seq = torch.export.Dim("seq", min=1, max=module.max_len)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")      # "mutation on a buffer": the cache's initial state is meaningless
        try:
            ep = torch.export.export(module, (ids, torch.arange(T)), dynamic_shapes=({1: seq}, {0: seq}), strict=False)
            program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        except Exception as e:  # noqa: BLE001 - export/lowering raise many types; surface one line
            raise EdgeLLMError(f"ExecuTorch export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                               "report it with the model's config") from e
    return program.buffer


def verify_tolerance(variant: str = "fp32", **_) -> str:
    """The named verification tolerance (``export.verify.TOLERANCES``) for an ExecuTorch *variant*.

    fp32 must match PyTorch as fp32 does; int8/int4 are compared with the same torchao-quantized
    model run eagerly in PyTorch (identical weights, dynamic 8-bit activations in both).
    """
    return "f32" if variant == "fp32" else "int8-act"


def export_executorch(model, out, *, variant: str = "fp32", force: bool = False, group_size: int = 32,
                      max_len: int = 512, verify=None, **_ignored) -> Path:
    """Export *model* (a spec or ``Loaded``) to the ExecuTorch artifact folder *out*.

    *verify* is ``export.verify``'s verifier, ``verify(artifact, reference, source=None)``; it runs
    on the temporary folder before it is moved into place, so a failure leaves nothing behind.

    >>> export_executorch("smollm2-135m", "out/smollm2-int4.pte", variant="int4")   # doctest: +SKIP
    PosixPath('out/smollm2-int4.pte')
    """
    return export_executorch_report(model, out, variant=variant, force=force, group_size=group_size,
                                    max_len=max_len, verify=verify)[0]


def export_executorch_report(model, out, *, variant: str = "fp32", force: bool = False, group_size: int = 32,
                             max_len: int = 512, verify=None, **_ignored) -> tuple[Path, dict]:
    """``export_executorch`` returning ``(path, report)``, as ``edgellm.exporters.export`` dispatches it."""
    import copy

    cfg = ExecuTorchExportConfig(variant=variant, group_size=group_size, max_len=max_len)
    require(EXECUTORCH)
    loaded = model if isinstance(model, Loaded) else load(model)
    check_supported(loaded.model, "ExecuTorch", export_support("executorch"))
    c = loaded.model.config
    if getattr(c, "sliding_window", None) and getattr(c, "use_sliding_window", True):
        raise EdgeLLMError("ExecuTorch export does not support sliding-window attention", "use a model without it")
    if loaded.tokenizer is None:
        raise EdgeLLMError("the model has no tokenizer to ship with the program", "export a folder with a tokenizer")
    net = copy.deepcopy(plain_model(loaded.model)).float().eval().requires_grad_(False)  # never touch the input
    if cfg.variant != "fp32":
        quantize_linears(net, cfg)
    program = lower(StaticCacheLM(net, cfg.max_len).eval(), c.vocab_size)
    emb = net.get_input_embeddings().weight
    out = Path(out)
    report: dict = {"variant": cfg.variant}
    with atomic_dir(out, force=force, inputs=(loaded.meta.source,)) as tmp:
        (tmp / EXECUTORCH.main).write_bytes(program)
        loaded.tokenizer.save_pretrained(tmp)
        n_layers, kv, hd = cache_shape(c)
        info = {
            "task": "causal-lm", "variant": cfg.variant,
            "config": {"variant": cfg.variant, "group_size": cfg.group_size, "max_len": cfg.max_len},
            "architecture": type(net).__name__, "model_type": c.model_type, "vocab_size": c.vocab_size,
            "max_positions": cfg.max_len, "num_layers": n_layers, "num_kv_heads": kv, "head_dim": hd,
            "eos_token_id": getattr(c, "eos_token_id", None),
            # the program stores the fp32 embedding table for the gather, besides the (packed) lm_head
            "weight_bytes": len(program) - emb.numel() * 4,
            "source": loaded.meta.name, "source_edgellm": loaded.meta.edgellm or {},
        }

        def check(folder: Path) -> dict:         # on the complete folder, before the manifest seals it
            if cfg.variant == "fp32":
                return verify(folder, loaded)
            return verify(folder, Loaded(net, loaded.tokenizer, loaded.meta), source=loaded)

        info = write_artifact(tmp, EXECUTORCH, info, check if verify is not None else None)
    report.update({k: info[k] for k in ("verification", "weight_bytes") if k in info})
    return out, report
