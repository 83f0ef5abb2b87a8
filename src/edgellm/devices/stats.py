"""``ModelStats`` for the cost model: exactly from a built model, or estimated from a base model and a recipe.

*Exact* stats come from the compressed model as a runtime holds it: the runtime's own
``weight_bytes()`` and ``file_bytes()``, and MACs counted from the (possibly structurally pruned)
modules. *Estimated* stats come from the base model and a recipe's config before anything is
built, so candidates that cannot fit are dropped without paying for compression: quantized
linears at their bits plus fp16 scales (and zeros), unstructured sparsity stored as values plus
a bitmask (dense in memory: no sparse kernels), structured pruning removing its share of layers,
MLP channels or heads. Deliberately absent: per-format padding details (estimates are for the
feasibility screen; measurements and exact stats replace them).
"""

from __future__ import annotations

from torch import nn

from ..calibrate import find_blocks, find_linears
from .costmodel import ModelStats

# bits per weight of llama.cpp block formats (codes + fp16 scale [+ fp16 min] per 32 weights)
GGUF_BPW = {("8", True): 8.5, ("4", True): 4.5, ("4", False): 5.0}


def _cfg(model, *names, default=None):
    cfg = model.config
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def arch_numbers(model: nn.Module) -> dict:
    """Layers, widths and heads from a transformers config (Llama-, BERT-, GPT-style names)."""
    hidden = _cfg(model, "hidden_size", "n_embd", "d_model")
    heads = _cfg(model, "num_attention_heads", "n_head")
    head_dim = _cfg(model, "head_dim", default=None) or (hidden // heads)
    causal = "CausalLM" in type(model).__name__ or "LMHead" in type(model).__name__
    return {"n_layers": _cfg(model, "num_hidden_layers", "n_layer"), "hidden": hidden, "heads": heads,
            "kv_heads": _cfg(model, "num_key_value_heads", default=heads), "head_dim": head_dim,
            "intermediate": _cfg(model, "intermediate_size", "n_inner", default=4 * hidden),
            "vocab": _cfg(model, "vocab_size"), "causal": causal}


def linear_macs(model: nn.Module) -> int:
    """Σ in×out over linear-like modules (anything with in/out_features, packed linears too), once each."""
    total, counted = 0, []
    for name, m in model.named_modules():
        if any(name.startswith(c + ".") for c in counted):
            continue
        if isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int):
            total += m.in_features * m.out_features
            counted.append(name)
    return total


def stats_from_model(model: nn.Module, kind: str, weight_bytes_per_token: int, memory_bytes: int, file_bytes: int,
                     kv_elem_bytes: int = 4) -> ModelStats:
    """Exact stats of a built model: bytes from its runtime, MACs from its modules.

    >>> rt = open_runtime("out/w8")                                                  # doctest: +SKIP
    >>> stats_from_model(rt.model, "w8", rt.weight_bytes(), model_bytes(rt.model), rt.file_bytes())  # doctest: +SKIP
    """
    a = arch_numbers(model)
    kv = 2 * a["n_layers"] * a["kv_heads"] * a["head_dim"] * kv_elem_bytes if a["causal"] else 0
    return ModelStats(kind=kind, weight_bytes_per_token=int(weight_bytes_per_token), memory_bytes=int(memory_bytes),
                      file_bytes=int(file_bytes), linear_macs=linear_macs(model), n_layers=a["n_layers"],
                      attn_dim=a["heads"] * a["head_dim"], kv_bytes_per_token=kv)


def recipe_kind(recipe) -> str:
    """Kernel family a recipe produces: ``w4``, ``w8a8``, ``sparse``, ``fp32`` (calibration key)."""
    q = recipe.steps.get("quantize")
    if q is not None:
        return f"w{q.bits}" + (f"a{q.act_bits}" if getattr(q, "act_bits", None) else "")
    p = recipe.steps.get("prune")
    if p is not None and getattr(p, "structure", None) is None:
        return "sparse"
    return "fp32"


def _block_linears(model: nn.Module) -> list[tuple[str, int, int]]:
    _, blocks = find_blocks(model)
    return [(n, lin.in_features, lin.out_features) for n, lin in find_linears(blocks[0]).items()]


def estimate_stats(model: nn.Module, recipe, runtime: str) -> ModelStats:
    """Estimated stats of *recipe* applied to the (uncompressed, fp32) *model* and run by *runtime*.

    >>> estimate_stats(base.model, load_recipe("recipes/w8-rtn.yaml"), "torch").weight_bytes_per_token  # doctest: +SKIP
    """
    a = arch_numbers(model)
    layers, heads, kv_heads, inter = a["n_layers"], a["heads"], a["kv_heads"], a["intermediate"]
    per_block = _block_linears(model)
    # per-block linear weights split into attention (scales with heads) and MLP (scales with channels)
    attn = sum(i * o for n, i, o in per_block if "attn" in n or "attention" in n)
    mlp = sum(i * o for n, i, o in per_block) - attn
    p = recipe.steps.get("prune")
    sparsity = 0.0
    if p is not None and p.structure is not None:
        total_block = (attn + mlp) * layers
        ratio = p.ratio
        if ratio is None:   # a budget: the share of block weights that must go
            budget = p.max_params if p.max_params is not None else p.max_bytes / 4
            other = sum(t.numel() for t in model.parameters()) - total_block
            ratio = min(max(1 - (budget - other) / total_block, 0.0), 0.95)
        if p.structure == "depth":
            layers = max(1, layers - round(layers * ratio))
        elif p.structure == "width":
            mlp, inter = int(mlp * (1 - ratio)), int(inter * (1 - ratio))
        else:
            keep = max(1, round(kv_heads * (1 - ratio)))
            attn, heads, kv_heads = int(attn * keep / kv_heads), heads * keep // kv_heads, keep
    elif p is not None:
        sparsity = p.effective_sparsity
    block_w = (attn + mlp) * layers
    emb = a["vocab"] * a["hidden"]
    out_lin = linear_macs(model) - sum(i * o for _, i, o in per_block) * a["n_layers"]   # lm_head / pooler / classifier
    tied = bool(_cfg(model, "tie_word_embeddings", default=False)) and a["causal"]
    norms = sum(t.numel() for n, t in model.named_parameters() if t.dim() == 1)
    q = recipe.steps.get("quantize")
    gguf = runtime == "llama.cpp"
    if q is not None:
        group = q.group_size if q.group_size and q.group_size > 0 else None
        bpw = GGUF_BPW.get((str(q.bits), bool(q.symmetric))) if gguf else None
        bpw = bpw or q.bits + (16 + (0 if q.symmetric else 16)) / (group or 10**9)
    else:
        bpw = 16.0 if gguf else 32.0
    dense_bits = 16.0 if gguf else 32.0
    lin_bytes = block_w * bpw / 8
    file_lin = lin_bytes * (1 - sparsity) + (block_w / 8 if sparsity and not gguf else 0)
    emb_bytes = emb * dense_bits / 8
    out_bytes = 0 if tied else out_lin * dense_bits / 8
    rest = norms * 4
    kv_elem = 2 if gguf else 4
    per_token = lin_bytes + out_bytes + (emb_bytes if tied else 0) + rest
    memory = lin_bytes + emb_bytes + out_bytes + rest
    return ModelStats(kind=recipe_kind(recipe), weight_bytes_per_token=int(per_token), memory_bytes=int(memory),
                      file_bytes=int(file_lin + emb_bytes + out_bytes + rest), linear_macs=int(block_w + out_lin),
                      n_layers=layers, attn_dim=heads * a["head_dim"],
                      kv_bytes_per_token=2 * layers * kv_heads * a["head_dim"] * kv_elem if a["causal"] else 0)
