"""The distillation trainer (src/edgellm/distill) under ``accelerate launch`` with 2 CPU processes (gloo).

Each process reads interleaved micro-batches (global micro-batch k = step·2 + rank) and DDP
averages the gradients, so 2 processes × batch 2 see exactly the data of 1 process × batch 4:
the loss traces must match, and fall. Note: ``accelerate launch --num_processes 2 --cpu``
starts ONE process (Accelerate's simple launcher only fans out through mpirun); on a machine
without a GPU ``--multi_gpu`` goes through torchrun and Accelerate picks MULTI_CPU with gloo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgellm.distillation import DistillConfig, distill, student_from_teacher
from edgellm.models import load
from edgellm.parallel.launch import free_port

ARGS = dict(steps=6, lr=3e-3, seq_len=32, warmup=1, val_tokens=128, eval_every=3, seed=0, alpha=0.5, temperature=2.0)


def test_two_process_distill_matches_single_process(tiny_llama, text_file, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is part of the core dependencies"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in ARGS.items()]
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(free_port()), "-m", "edgellm.distillation",
           "--teacher", str(tiny_llama), "--student-from", str(tiny_llama), "--keep-layers", "2",
           "--data", str(text_file), "--batch-size", "2", "--out", str(tmp_path / "two"), "--quiet", "--threads", "1",
           *flags]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = [json.loads(line) for line in (tmp_path / "two" / "distill" / "train.jsonl").read_text().splitlines()]

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher = load(tiny_llama)
        one = distill(teacher, student_from_teacher(teacher, keep_layers=2), text_file,
                      DistillConfig(batch_size=4, **ARGS), progress=False)
    finally:
        torch.set_num_threads(n)
    assert [r["tokens_seen"] for r in two] == [r["tokens_seen"] for r in one.train_log]   # 2 × batch 2 = batch 4
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one.train_log], abs=1e-4)
    assert two[-1]["loss"] < two[0]["loss"] - 0.2
