"""One pipeline rank's share of a decoder-only model: a contiguous slice of its decoder layers.

``load_stage(spec, rank, world)`` splits the layers by bytes (``placement.split_layers``), builds
the model on the meta device and reads only this rank's tensors from the safetensors files, so
each process holds about 1/world of the weights: rank 0 adds the input embedding, the last rank
the final norm and the output head (with tied embeddings both ends hold the embedding matrix).
The slice is the same transformers model class with ``num_hidden_layers`` set to the slice
length and the layers renumbered from 0, so each rank's own ``DynamicCache`` indexes its own
layers and the model's forward (mask, rotary positions, cache) runs unchanged.

Which families qualify (``FamilySpec.pipeline``: the forward is embed → blocks → final norm with
nothing applied to ``inputs_embeds`` in between, so a slice fed with the previous rank's hidden
states is exact) and where each keeps its embedding, blocks, final norm and head come from the
family registry (``families.py``). Gemma qualifies: transformers 5 applies its √hidden embedding
scale inside the embedding module, which only rank 0 runs. Deliberately absent: families whose
forward transforms ``inputs_embeds``: they are refused with a clear error.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EdgeLLMError
from ..families import (FamilySpec, base_prefix, family_of, find_blocks, get_path, model_path, module, require,
                        set_path)
from ..placed import meta_model, plain_folder
from .placement import split_layers


@dataclass
class Stage:
    """A rank's slice: ``model`` is an ``XForCausalLM`` whose blocks are global layers ``layers``."""
    model: torch.nn.Module
    rank: int
    world: int
    layers: range
    n_layers: int               # layers of the whole model
    hidden_size: int
    vocab_size: int
    dtype: torch.dtype
    device: torch.device
    weight_bytes: int           # bytes of the weights this rank holds
    slices: list                # every rank's layer range, for reports
    cache_arg: str              # "cache" (transformers >= 5.2x) or "past_key_values"

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.world - 1

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, cache, logits_to_keep: int = 0) -> torch.Tensor:
        """Token ids [B, T] (rank 0) or hidden states [B, T, H] → hidden states, or logits on the last rank."""
        kw = {"input_ids": x} if self.first else {"inputs_embeds": x}
        kw.update({"use_cache": cache is not None, self.cache_arg: cache})
        if self.last:
            return self.model(**kw, logits_to_keep=logits_to_keep).logits
        return get_path(self.model, base_prefix(self.model))(**kw).last_hidden_state


def layer_sizes(model: torch.nn.Module) -> tuple[list[int], int, int]:
    """(bytes per decoder layer, bytes of the input embedding, bytes of norm + untied output head)."""
    def nbytes(mod) -> int:
        return sum(p.numel() * p.element_size() for p in mod.parameters()) if mod is not None else 0

    layers = [nbytes(layer) for layer in find_blocks(model)[1]]
    head_bytes = nbytes(model.get_output_embeddings())   # tied or not, the last rank holds the output matrix
    return layers, nbytes(module(model, "embed")), head_bytes + nbytes(module(model, "final_norm"))


def check_family(model: torch.nn.Module) -> FamilySpec:
    """The model's family if pipeline stages support it; EdgeLLMError naming the families that do."""
    spec = require(model, "pipeline", "pipeline parallelism")
    if module(model, "embed") is None or module(model, "final_norm") is None:
        raise EdgeLLMError(f"{type(model).__name__} has no embedding or final norm where FamilySpec"
                           f"('{spec.model_type}') says", "check the family's embed/final_norm paths")
    find_blocks(model)
    return spec


def plan_stages(spec, world: int, dtype: torch.dtype = torch.float32) -> tuple[list[range], list[int], int]:
    """Every rank's layer range and weight bytes, and the weight bytes read per decoded token over all
    ranks (the input embedding is looked up, one row, not read whole), from the config alone."""
    model = meta_model(plain_folder(spec), "causal-lm", dtype)
    check_family(model)
    sizes, first, last = layer_sizes(model)
    slices = split_layers(sizes, world, first, last)
    rank_bytes = [sum(sizes[i] for i in s) + (first if r == 0 else 0) + (last if r == world - 1 else 0)
                  for r, s in enumerate(slices)]
    return slices, rank_bytes, sum(rank_bytes) - first


def _slice_model(model: torch.nn.Module, layers: range, first: bool, last: bool) -> torch.nn.Module:
    """Keep only *layers* (renumbered from 0) and the ends this rank needs; the rest is dropped."""
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = len(layers)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[layers.start:layers.stop]
    path, blocks = find_blocks(model)
    kept = torch.nn.ModuleList([blocks[i] for i in layers])
    set_path(model, path, kept)
    paths = {w: _path(model, w) for w in ("embed", "final_norm", "lm_head")}
    for j, layer in enumerate(kept):
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = j
    for mod in model.modules():
        if hasattr(mod, "config") and isinstance(getattr(mod, "config"), type(cfg)):
            mod.config = cfg
    if not last:
        set_path(model, paths["final_norm"], torch.nn.Identity())
        set_path(model, paths["lm_head"], None)
    if not first:
        head, emb = module(model, "lm_head"), module(model, "embed")
        tied = last and head is not None and head.weight is emb.weight
        if not tied:
            set_path(model, paths["embed"], None)
    return model


def _path(model, which: str) -> str:
    return model_path(model, family_of(model), which)


def _file_key(name: str, layers: range, keys: set, tie: bool, paths: dict) -> str:
    """Name of local parameter *name* in the checkpoint (layers renumbered back; tied head → embedding).

    *paths*: the model's dotted ``blocks``, ``embed`` and ``lm_head`` paths."""
    blocks = paths["blocks"] + "."
    if name.startswith(blocks):
        idx, _, tail = name[len(blocks):].partition(".")
        name = f"{blocks}{layers.start + int(idx)}.{tail}"
    if name not in keys and tie and name == f"{paths['lm_head']}.weight":
        name = f"{paths['embed']}.weight"
    if name not in keys:
        raise EdgeLLMError(f"the checkpoint has no tensor '{name}'", "re-create the model folder")
    return name


def load_stage(spec, rank: int, world: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Stage:
    """Load rank *rank* of *world*'s slice of *spec* (built-in name or plain HF folder), reading only its tensors.

    >>> s = load_stage("smollm2-135m", rank=0, world=2)     # doctest: +SKIP
    >>> s.layers, s.weight_bytes                            # doctest: +SKIP
    (range(0, 15), 326...)
    """
    from accelerate.utils import set_module_tensor_to_device
    from safetensors import safe_open

    if not 0 <= rank < world:
        raise EdgeLLMError(f"rank {rank} is outside world size {world}", "ranks run from 0 to world size - 1")
    path: Path = plain_folder(spec)
    model = meta_model(path, "causal-lm", dtype)
    check_family(model)
    sizes, first_b, last_b = layer_sizes(model)
    slices = split_layers(sizes, world, first_b, last_b)
    n_layers = len(sizes)
    tie = bool(getattr(model.config, "tie_word_embeddings", False))
    paths = {w: _path(model, w) for w in ("blocks", "embed", "lm_head")}
    model = _slice_model(model, slices[rank], rank == 0, rank == world - 1)
    files = sorted(path.glob("*.safetensors"))
    where = {}
    for f in files:
        with safe_open(f, framework="pt") as h:
            for k in h.keys():
                where[k] = f
    needed = {}
    for name, p in model.named_parameters():   # tied parameters appear once
        needed[name] = _file_key(name, slices[rank], set(where), tie, paths)
    opened = {}
    try:
        for name, key in needed.items():
            f = where[key]
            if f not in opened:
                opened[f] = safe_open(f, framework="pt")
            tensor = opened[f].get_tensor(key).to(dtype)
            set_module_tensor_to_device(model, name, device, value=tensor)
    finally:
        opened.clear()
    head, emb = module(model, "lm_head"), module(model, "embed")
    if tie and head is not None and emb is not None:
        head.weight = emb.weight
    model.to(device)
    model.eval()
    cfg = model.config
    params = inspect.signature(get_path(model, base_prefix(model)).forward).parameters
    return Stage(model=model, rank=rank, world=world, layers=slices[rank], n_layers=n_layers,
                 hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, dtype=dtype, device=torch.device(device),
                 weight_bytes=sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()),
                 slices=slices, cache_arg="cache" if "cache" in params else "past_key_values")
