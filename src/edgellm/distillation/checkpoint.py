"""Training checkpoints that resume exactly, and refuse to resume a different run.

A checkpoint folder ``<run>/checkpoint-NNNNNN/`` holds the trainable weights
(``state.safetensors``: student plus hidden-state projections), the optimizer state, each
process's RNG state, the JSONL logs up to that step and ``trainer_state.json`` with the step
and the run's fingerprint. The learning rate is a pure function of the step and the data
order a pure function of (seed, micro-batch), so nothing else is needed to continue exactly.
The fingerprint hashes the config (minus eval/save cadence), the teacher, the student's
initial weights and the data; a checkpoint whose fingerprint differs is refused.
Written atomically; only the newest checkpoint is kept. A checkpoint (or a finished run's folder)
is discarded by renaming it to a temporary name first, so a SIGKILL during the deletion never
leaves a half-deleted checkpoint that ``--resume`` would pick; the next save (or the next finished
run) removes what a killed one left (``fileio.clean_stale``). Deliberately absent: sharded
(FSDP) optimizer states.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import EdgeLLMError
from ..fileio import atomic_dir, clean_stale, temp_prefix, write_json

PREFIX = "checkpoint-"
NOT_FINGERPRINTED = ("eval_every", "save_every")


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def weights_checksum(module: torch.nn.Module) -> str:
    """A cheap identity of a model's weights: sums and shapes of every parameter."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in module.state_dict().items():
            h.update(f"{name}{tuple(p.shape)}{float(p.double().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def save_checkpoint(run_dir: Path, step: int, container, optimizer, rng_state: dict, state: dict,
                    logs: dict[str, list], accelerator) -> Path:
    """Write ``run_dir/checkpoint-<step>`` (every process writes its RNG; the main process the rest)."""
    from safetensors.torch import save_model

    run_dir = Path(run_dir)
    path = run_dir / f"{PREFIX}{step:06d}"
    rank = accelerator.process_index
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_checkpoints(run_dir)
        with atomic_dir(path, force=True, own=True) as tmp:
            save_model(accelerator.unwrap_model(container), str(tmp / "state.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(rng_state, tmp / f"rng-{rank}.pt")
            for name, rows in logs.items():
                (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
            write_json(tmp / "trainer_state.json", {**state, "step": step})
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        torch.save(rng_state, path / f"rng-{rank}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for old in run_dir.glob(f"{PREFIX}*"):
            if old != path and old.is_dir():
                discard(old)
    return path


def clean_checkpoints(run_dir: Path) -> list[str]:
    """Remove the temporaries a killed run left among *run_dir*'s checkpoints (``fileio.clean_stale``).

    >>> clean_checkpoints(Path("out/s.run"))        # doctest: +SKIP
    ['.checkpoint-000004.tmp-4242-x1y2z3']
    """
    return clean_stale(Path(run_dir) / f"{PREFIX}*")


def discard(path: Path) -> None:
    """Delete a checkpoint or a finished run's folder: renamed to a temporary name first (one atomic step),
    then removed, so a kill half-way leaves a temporary the next run removes, never half a checkpoint.

    >>> discard(Path("out/s.run"))        # after the student is saved        # doctest: +SKIP
    """
    path = Path(path)
    clean_stale(path)
    if not path.exists():
        return
    gone = path.with_name(f"{temp_prefix(path)}discard-{os.urandom(4).hex()}")
    os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def find_checkpoint(resume: str | Path) -> Path:
    """*resume* itself when it is a checkpoint folder, else its newest ``checkpoint-*`` subfolder."""
    resume = Path(resume)
    if (resume / "trainer_state.json").is_file():
        return resume
    if resume.is_dir():
        found = sorted(p for p in resume.glob(f"{PREFIX}*") if (p / "trainer_state.json").is_file())
        if found:
            return found[-1]
    raise EdgeLLMError(f"'{resume}' is not a distillation checkpoint (no trainer_state.json)",
                       "pass a checkpoint-NNNNNN folder or the .run folder that holds them")


def load_checkpoint(resume: str | Path, expected: str, parts: dict, container, optimizer, accelerator) -> tuple[dict, dict]:
    """Restore weights and optimizer; returns (trainer_state, logs). Refuses another run's checkpoint."""
    from safetensors.torch import load_model

    path = find_checkpoint(resume)
    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("fingerprint") != expected:
        old = state.get("fingerprint_parts", {})
        differ = sorted(k for k in set(old) | set(parts) if old.get(k) != parts.get(k)) or ["unknown"]
        raise EdgeLLMError(f"checkpoint '{path}' was written by a different run ({', '.join(differ)} differ)",
                           "resume with the same teacher, student, data and settings, or start a new run without --resume")
    try:
        load_model(accelerator.unwrap_model(container), str(path / "state.safetensors"))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        rng_file = path / f"rng-{accelerator.process_index}.pt"
        if not rng_file.exists():
            raise EdgeLLMError(f"checkpoint '{path}' has no RNG state for process {accelerator.process_index}",
                               "resume with the same number of processes")
        state["rng"] = torch.load(rng_file, weights_only=True)
    except (OSError, RuntimeError, KeyError) as e:
        raise EdgeLLMError(f"checkpoint '{path}' is unreadable or incomplete: {str(e).splitlines()[0]}",
                           "resume from another checkpoint or start again") from e
    logs = {}
    for name in ("train.jsonl", "eval.jsonl"):
        f = path / name
        logs[name] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []
    return state, logs


def rng_snapshot() -> dict:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def rng_restore(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
