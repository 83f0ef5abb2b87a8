"""PyTorch runtime: eager transformers models on the best device present.

Device order: CUDA, then Apple MPS, then CPU (``device=`` overrides). On a GPU the model
runs in bf16 where supported, else fp16; on the CPU it keeps its loaded dtype (fp32, or
edgellm's packed integer linears). Decoding feeds the model's KV cache to the shared
``base.decode_loop``. Deliberately absent: batching and paged caches (the server and the
parallel pipeline add their own).
"""

from __future__ import annotations

import inspect
from typing import Iterator

import torch

from ..errors import EdgeLLMError
from ..models import Loaded, load, model_bytes
from .base import decode_loop


def best_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_dtype(device: str, loaded_dtype: torch.dtype) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on other GPUs, the loaded dtype on CPU."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return loaded_dtype


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


class TorchRuntime:
    """Runtime over a loaded transformers model.

    >>> rt = TorchRuntime.open("smollm2-135m", threads=2)    # doctest: +SKIP
    >>> rt.logits(torch.tensor([1, 2, 3])).shape             # doctest: +SKIP
    torch.Size([3, 49152])
    """

    name = "torch"

    def __init__(self, loaded: Loaded, device: str | None = None, threads: int | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = device or best_device()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EdgeLLMError(f"device '{self.device}' requested but CUDA is not available", "use --device cpu")
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        loaded_dtype = next(self.model.parameters()).dtype
        self.dtype = device_dtype(self.device, loaded_dtype)
        if getattr(self.model, "hf_device_map", None):   # placed by max_memory: Accelerate's hooks move data
            self.dtype = loaded_dtype
        elif self.device != "cpu" or self.dtype != loaded_dtype:
            self.model.to(device=self.device, dtype=self.dtype if self.dtype.is_floating_point else None)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        params = inspect.signature(self.model.forward).parameters
        self._keep_arg = "logits_to_keep" in params
        # transformers ≥ 5.2x names the KV cache `cache`; earlier releases `past_key_values`
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def open(cls, spec, device: str | None = None, threads: int | None = None, **load_kwargs) -> "TorchRuntime":
        loaded = spec if isinstance(spec, Loaded) else load(spec, **load_kwargs)
        return cls(loaded, device=device, threads=threads)

    @property
    def meta(self):
        return self.loaded.meta

    # -- the Runtime interface ------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids.view(1, -1).to(self.device), use_cache=False)
        return out.logits[0].float().cpu()

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop_ids=(), logits_processor=None) -> Iterator[int]:
        """Yield up to *max_new_tokens* ids; stops early only on *stop_ids* (EOS is ignored otherwise).

        *logits_processor(generated_ids, logits) -> logits* lets callers constrain decoding.
        """
        kw = {"logits_to_keep": 1} if self._keep_arg else {}
        cache: dict = {}

        def forward(x: torch.Tensor) -> torch.Tensor:      # prefill when the cache is empty, else one step
            out = self.model(input_ids=x, use_cache=True, **({self._cache_arg: cache["past"]} if cache else {}), **kw)
            cache["past"] = _cache_of(out)
            return out.logits[0, -1]

        yield from decode_loop(lambda: forward(ids.view(1, -1).to(self.device)),
                               lambda tok: forward(torch.tensor([[tok]], device=self.device)),
                               max_new_tokens, temperature, top_p, seed, stop_ids, logits_processor)

    def weight_bytes(self) -> int:
        """Bytes read per decoded token: all weights, minus an untied input embedding (one row is read)."""
        total = model_bytes(self.model)
        emb = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        out = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if emb is not None and getattr(emb, "weight", None) is not None:
            tied = out is not None and getattr(out, "weight", None) is not None and out.weight.data_ptr() == emb.weight.data_ptr()
            if not tied:
                total -= emb.weight.numel() * emb.weight.element_size()
        return total

    def file_bytes(self) -> int:
        return self.loaded.meta.file_bytes

    # -- classifiers ------------------------------------------------------------------------
    @torch.inference_mode()
    def classify(self, texts: list[str], max_length: int = 128) -> torch.Tensor:
        """[B] texts -> [B, num_labels] logits, for sequence-classification models."""
        if not hasattr(self.model, "num_labels") or "SequenceClassification" not in type(self.model).__name__:
            raise EdgeLLMError(f"{type(self.model).__name__} is not a sequence classifier", "load it with --task classification")
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float().cpu()

