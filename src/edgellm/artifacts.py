"""The folder format of exported artifacts (ONNX, ExecuTorch, LiteRT): the one place that writes and reads it.

An artifact is a folder whose name ends in the format's suffix (``X.onnx/``, ``X.pte/``), holding
the runtime's file (``model.onnx``, ``model.pte``), the tokenizer files, the sidecar
``edgellm.json`` and ``manifest.json`` (size and sha256 of every other file, ``edgellm.fileio``).
The sidecar is a JSON object whose ``format`` field names the format and its schema version
(``edgellm-onnx/1``, ``edgellm-executorch/1``); the rest is what the runtime needs to run the
file (task, vocabulary, cache shapes, weight bytes read per token) and how it was made.

Exporters call ``write_artifact`` on their temporary folder (the sidecar, then the verification
check, then the manifest, each file written atomically); runtimes call ``resolve_artifact`` and
``read_artifact``, which refuse a missing, unparsable, foreign or incomplete sidecar and a file
that no longer matches the manifest with an ``EdgeLLMError``. A folder without a manifest is read
(as ``edgellm.models.load`` reads one): the runtime's own loader then judges the file.
Deliberately absent: GGUF, a single file that embeds its provenance in its own header
(``exporters.gguf``), and plain model folders (``edgellm.models``).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgeLLMError
from .fileio import verify_manifest, write_json, write_manifest

SIDECAR = "edgellm.json"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ArtifactFormat:
    """One artifact folder format: its sidecar tag, main file, suffix, and what reading it needs.

    >>> ONNX.tag, ONNX.main, ONNX.suffix
    ('edgellm-onnx/1', 'model.onnx', '.onnx')
    """

    name: str                       # "onnx", as ``edgellm export --format`` names it
    title: str                      # "ONNX", for messages
    version: int                    # schema version this edgellm writes and reads
    main: str                       # the runtime's file inside the folder
    suffix: str                     # the folder's suffix, which picks the runtime
    modules: tuple[str, ...]        # Python modules exporting and running it need
    extra: str                      # the pip extra that installs them
    required: tuple[str, ...]       # sidecar keys every reader relies on

    def __post_init__(self):
        if self.version < 1 or not self.suffix.startswith(".") or not self.modules:
            raise EdgeLLMError(f"invalid artifact format {self.name!r}", "give a version ≥ 1, a .suffix and modules")

    @property
    def tag(self) -> str:
        return f"edgellm-{self.name}/{self.version}"


ONNX = ArtifactFormat("onnx", "ONNX", 1, "model.onnx", ".onnx", ("onnx", "onnxruntime"), "onnx",
                      ("task", "inputs", "outputs", "vocab_size", "weight_bytes"))
EXECUTORCH = ArtifactFormat("executorch", "ExecuTorch", 1, "model.pte", ".pte", ("executorch", "executorch.runtime"),
                            "executorch", ("task", "vocab_size", "max_positions", "weight_bytes"))
LITERT = ArtifactFormat("litert", "LiteRT", 1, "model.tflite", ".tflite", ("ai_edge_litert.interpreter",), "litert",
                        ("task", "vocab_size", "max_positions", "signatures", "weight_bytes"))
FORMATS = {f.name: f for f in (ONNX, EXECUTORCH, LITERT)}


def require(fmt: ArtifactFormat) -> None:
    """Import what *fmt* needs, or raise an EdgeLLMError naming the extra to install.

    >>> require(ONNX)          # doctest: +SKIP
    """
    for module in fmt.modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise EdgeLLMError(f"{fmt.title} export and runtime need '{e.name or module}', which is not installed",
                               f"pip install 'edgellm[{fmt.extra}]'") from e


def write_sidecar(folder: str | os.PathLike, fmt: ArtifactFormat, info: dict) -> dict:
    """Write *info* as *folder*'s ``edgellm.json`` (atomically), tagged with *fmt*'s format and version."""
    missing = [k for k in fmt.required if k not in info]
    if missing:
        raise EdgeLLMError(f"{fmt.title} sidecar lacks {', '.join(missing)}", "the exporter must provide them")
    info = {"format": fmt.tag, **{k: v for k, v in info.items() if k != "format"}}
    write_json(Path(folder) / SIDECAR, info)
    return info


def write_artifact(folder: str | os.PathLike, fmt: ArtifactFormat, info: dict, check=None) -> dict:
    """Finish an artifact in *folder*: the sidecar, then ``check(folder)`` if given, then the manifest.

    The check (an exporter's verification) runs on the folder as a runtime will open it, sidecar
    included; its result is stored in the sidecar under ``verification`` before the manifest seals
    the folder. Returns the sidecar as written.

    >>> info = write_artifact(tmp, ONNX, {"task": "causal-lm", ...}, check=verify)   # doctest: +SKIP
    >>> info["verification"]["passed"]                                               # doctest: +SKIP
    True
    """
    info = write_sidecar(folder, fmt, info)
    if check is not None:
        info = write_sidecar(folder, fmt, {**info, "verification": check(Path(folder))})
    write_manifest(folder)
    return info


def resolve_artifact(spec, fmt: ArtifactFormat) -> Path:
    """The artifact folder for *spec*: the folder itself, or the folder holding its ``fmt.main`` file.

    >>> resolve_artifact("out/m.onnx/model.onnx", ONNX)     # doctest: +SKIP
    PosixPath('out/m.onnx')
    """
    path = Path(str(spec)).expanduser()
    if not path.exists():
        raise EdgeLLMError(f"'{path}' does not exist", "check the path, or export the model first with edgellm export")
    if path.is_file():
        if path.name == fmt.main and (path.parent / SIDECAR).exists():
            return path.parent
        raise EdgeLLMError(f"'{path}' is a bare file without edgellm's sidecar ({SIDECAR}, tokenizer)",
                           f"pass the folder written by: edgellm export MODEL --format {fmt.name} --out DIR{fmt.suffix}")
    return path


def read_sidecar(folder: str | os.PathLike, fmt: ArtifactFormat) -> dict:
    """*folder*'s ``edgellm.json``, checked to be a *fmt* sidecar of a version this edgellm reads."""
    folder = Path(folder)
    path = folder / SIDECAR
    hint = f"export it with: edgellm export MODEL --format {fmt.name} --out DIR{fmt.suffix}"
    if not path.is_file():
        raise EdgeLLMError(f"'{folder}' has no {SIDECAR}: it is not an edgellm {fmt.title} export", hint)
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeLLMError(f"'{path}' is not valid JSON: {e}", "re-export the model") from e
    if not isinstance(info, dict):
        raise EdgeLLMError(f"'{path}' is not a JSON object", "re-export the model")
    tag = str(info.get("format", ""))
    name, _, version = tag.partition("/")
    if name != f"edgellm-{fmt.name}":
        raise EdgeLLMError(f"'{folder}' is not an edgellm {fmt.title} export (its {SIDECAR} says format '{tag}')", hint)
    if not version.isdigit() or int(version) > fmt.version:
        raise EdgeLLMError(f"'{folder}' uses {tag}, which this version of edgellm cannot read "
                           f"(it reads {fmt.tag})", "upgrade edgellm, or re-export the model")
    missing = [k for k in fmt.required if k not in info]
    if missing:
        raise EdgeLLMError(f"'{path}' lacks {', '.join(missing)}", "re-export the model")
    return info


def read_artifact(folder: str | os.PathLike, fmt: ArtifactFormat) -> dict:
    """Check *folder* against its manifest, then return its sidecar (``read_sidecar``).

    >>> read_artifact("out/m.onnx", ONNX)["task"]        # doctest: +SKIP
    'causal-lm'
    """
    folder = Path(folder)
    try:
        verify_manifest(folder)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise EdgeLLMError(f"'{folder / MANIFEST}' is corrupt ({type(e).__name__})", "re-export the model") from e
    return read_sidecar(folder, fmt)


__all__ = ["EXECUTORCH", "FORMATS", "LITERT", "MANIFEST", "ONNX", "SIDECAR", "ArtifactFormat", "read_artifact",
           "read_sidecar", "require", "resolve_artifact", "write_artifact", "write_sidecar"]
