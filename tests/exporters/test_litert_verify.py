"""The LiteRT int8 reference's run-time input rounding (``fake_quantize_rows_asymmetric``) against the interpreter:
one fully-connected op converted as dynamic-range int8, fed rows of different ranges and offsets, and rows on an
integer grid whose values fall on exact half-steps (as a quantized embedding row does after a unit-weight RMSNorm),
where only the kernel's own arithmetic (x * 255/span, half to even) rounds every value the same way."""

from __future__ import annotations

import json

import ai_edge_litert.interpreter  # noqa: F401  (the litert extra: a missing one fails here, never skips)
import torch

from edgellm.exporters.litert_env import run_converter
from edgellm.exporters.litert_verify import fake_quantize_rows_asymmetric, fake_quantize_symmetric


def test_the_reference_rounds_each_input_row_as_the_int8_kernel_does(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32).eval()
    torch.export.save(torch.export.export(lin, (torch.zeros(16, 64),)), tmp_path / "fc.pt2")
    job = {"signatures": [{"name": "main", "program": str(tmp_path / "fc.pt2")}], "out": str(tmp_path / "fc8.tflite"),
           "variant": "int8", "group_size": 32, "quantize_embeddings": False, "report": str(tmp_path / "r.json")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    run_converter(tmp_path / "job.json")
    runner = Interpreter(model_path=str(tmp_path / "fc8.tflite")).get_signature_runner("main")
    x = torch.randn(16, 64) * torch.rand(16, 1) * 3 + torch.randn(16, 1)       # rows of other ranges and offsets
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-85, 86, (8, 64), generator=g).float()
    codes[:, 0], codes[:, 1] = -85, 85                  # a span of 170 codes: x * 255/span = 1.5 k, every odd k a tie
    x[8:] = codes * torch.empty(8, 1).uniform_(0.01, 0.05, generator=g)
    got = torch.from_numpy(next(iter(runner(**{next(iter(runner.get_input_details())): x.numpy()}).values())))
    W, b = fake_quantize_symmetric(lin.weight.detach(), 8), lin.bias.detach()
    modelled = torch.nn.functional.linear(fake_quantize_rows_asymmetric(x), W, b)
    assert (modelled - got).abs().max() < 1e-5                                 # every one of the 512 outputs
    assert (torch.nn.functional.linear(x, W, b) - got).abs().max() > 1e-3     # the weights alone do not explain it
    span = x.amax(-1, keepdim=True).clamp(min=0) - x.amin(-1, keepdim=True).clamp(max=0)
    by_scale, by_inv = torch.round(x / (span / 255)), torch.round(x * (torch.full_like(span, 255.0) / span))
    assert (by_scale[8:] != by_inv[8:]).any()           # the grid rows hold ties that x / scale rounds the other way


def test_rows_are_rounded_between_their_own_min_and_max_with_zero_exact():
    x = torch.tensor([[-1.0, 0.0, 3.0], [0.5, 0.25, 1.0]])
    q = fake_quantize_rows_asymmetric(x)
    assert q[0, 1] == 0 and q[1].min() >= 0                       # zero is a code; a positive row keeps 0 as its floor
    assert torch.allclose(q, x, atol=4.0 / 255 / 2 + 1e-6)       # half a step of the row's own range
    assert torch.equal(fake_quantize_rows_asymmetric(q), q)      # codes are fixed points
