"""The one decode loop (runtimes/base.decode_loop) and every runtime's generate running through it.

A toy "model" gives the next-token logits as a function of the last token fed: greedy decoding
follows a known chain, so the loop's bookkeeping (one prefill, a step per token but the last,
stop ids, the token budget, positions fed to the backend) can be checked exactly.
"""

import numpy as np
import pytest
import torch

import edgellm.runtimes.executorch as et_mod
import edgellm.runtimes.llamacpp as lc_mod
import edgellm.runtimes.onnxrt as ort_mod
import edgellm.runtimes.torch as torch_mod
from edgellm.runtimes import base
from edgellm.runtimes.base import decode_loop

V = 11


def toy_row(tok: int) -> torch.Tensor:
    """Logits after *tok*: (3·tok + 1) mod V is clearly the best, the rest are close to each other."""
    row = torch.linspace(0.0, 1.0, V)
    row[(3 * tok + 1) % V] = 6.0
    return row


def chain(last: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        last = (3 * last + 1) % V
        out.append(last)
    return out


class Calls:
    def __init__(self):
        self.prefill = 0
        self.steps: list[int] = []

    def loop(self, prompt_last: int, n: int, **kw):
        def prefill():
            self.prefill += 1
            return toy_row(prompt_last)

        def step(tok):
            self.steps.append(tok)
            return toy_row(tok)

        return list(decode_loop(prefill, step, n, **kw))


def test_greedy_follows_the_argmax_chain_with_one_prefill_and_no_step_after_the_last_token():
    c = Calls()
    assert c.loop(2, 6) == chain(2, 6)
    assert c.prefill == 1 and c.steps == chain(2, 5)


def test_max_new_tokens_is_respected_and_zero_runs_nothing():
    for n in (1, 3, 9):
        c = Calls()
        assert len(c.loop(4, n)) == n and len(c.steps) == n - 1
    c = Calls()
    assert c.loop(4, 0) == [] and c.prefill == 0 and c.steps == []


def test_stop_ids_end_the_loop_after_the_stop_token():
    full = chain(1, 8)
    stop = full[3]
    c = Calls()
    assert c.loop(1, 8, stop_ids={stop}) == full[: full.index(stop) + 1]
    assert c.steps == full[: full.index(stop)]          # nothing is fed after the stop token


def test_temperature_sampling_is_reproducible_by_seed_and_varies_across_seeds():
    runs = {s: Calls().loop(0, 12, temperature=5.0, seed=s) for s in range(8)}
    assert all(Calls().loop(0, 12, temperature=5.0, seed=s) == runs[s] for s in range(8))
    assert len({tuple(r) for r in runs.values()}) > 1
    assert any(r != chain(0, 12) for r in runs.values())   # hot sampling leaves the greedy chain
    # a tight nucleus keeps only the best token, whatever the temperature
    assert Calls().loop(0, 12, temperature=5.0, top_p=0.05, seed=1) == chain(0, 12)


def test_logits_processor_sees_the_tokens_so_far_and_can_force_a_token():
    seen = []

    def force_five(generated, row):
        seen.append(list(generated))
        out = torch.full_like(row, -1e9)
        out[5] = 0.0
        return out

    assert Calls().loop(0, 4, logits_processor=force_five) == [5, 5, 5, 5]
    assert seen == [[], [5], [5, 5], [5, 5, 5]]


# -- every runtime's generate is the one loop, fed with its own prefill and step ----------------

@pytest.fixture
def spy(monkeypatch):
    calls = []

    def spying_loop(*args, **kwargs):
        calls.append(args[2:])
        yield from base.decode_loop(*args, **kwargs)

    for mod in (torch_mod, ort_mod, et_mod, lc_mod):
        monkeypatch.setattr(mod, "decode_loop", spying_loop)
    return calls


def fake_onnx():
    rt = object.__new__(ort_mod.OnnxRuntime)
    rt.task, rt.fed = "causal-lm", []

    def _step(ids, start, past):
        rt.fed.append((ids[0].tolist(), start, past))
        rows = np.stack([toy_row(int(t)).numpy() for t in ids[0]])
        return rows, f"cache@{start + ids.shape[1]}"

    rt._step = _step
    return rt


def fake_executorch():
    rt = object.__new__(et_mod.ExecuTorchRuntime)
    rt.fed = []

    def _run(ids, start):
        rt.fed.append((ids.view(-1).tolist(), start))
        return torch.stack([toy_row(int(t)) for t in ids.view(-1)])

    rt._run = _run
    return rt


class FakeLlama:
    def __init__(self):
        self._logits_all, self.fed, self.last = True, [], None

    def reset(self):
        self.fed.append("reset")

    def eval(self, toks):
        self.fed.append(list(toks))
        self.last = toks[-1]


def fake_llamacpp():
    rt = object.__new__(lc_mod.LlamaCppRuntime)
    rt.llm, rt.max_positions, rt.vocab_size = FakeLlama(), 64, V
    rt._last_logits = lambda: toy_row(rt.llm.last)
    return rt


def test_artifact_runtimes_decode_through_the_one_loop(spy):
    prompt = torch.tensor([3, 7, 2])
    onnx, pte, gguf = fake_onnx(), fake_executorch(), fake_llamacpp()
    for rt in (onnx, pte, gguf):
        assert list(rt.generate(prompt, 5)) == chain(2, 5)
        sampled = list(rt.generate(prompt, 6, temperature=3.0, seed=7))
        assert sampled == Calls().loop(2, 6, temperature=3.0, seed=7)     # same loop, same draws
        assert list(rt.generate(prompt, 5, stop_ids={chain(2, 5)[1]})) == chain(2, 2)
    assert len(spy) == 9 and all(c[0] in (5, 6) for c in spy)
    # each backend is fed the prompt once, then one token at a time at the right position
    feed = chain(2, 4)
    assert [(f[0], f[1]) for f in onnx.fed[:5]] == [([3, 7, 2], 0)] + [([t], 3 + i) for i, t in enumerate(feed)]
    assert onnx.fed[1][2] == "cache@3" and onnx.fed[0][2] is None          # each step gets the last step's cache
    assert pte.fed[:5] == [([3, 7, 2], 0)] + [([t], 3 + i) for i, t in enumerate(feed)]
    assert gguf.llm.fed[:6] == ["reset", [3, 7, 2]] + [[t] for t in feed]
    assert gguf.llm._logits_all is True                                     # restored after decoding


def test_torch_runtime_decodes_through_the_one_loop(spy, tiny_llama):
    from edgellm.models import load

    m = load(tiny_llama)
    rt = torch_mod.TorchRuntime(m)
    ids = torch.arange(10, 26)
    out = list(rt.generate(ids, 6))
    assert len(spy) == 1 and spy[0][0] == 6
    greedy = []                                         # the same tokens without any cache: argmax of full passes
    seq = ids.clone()
    for _ in range(6):
        nxt = int(rt.logits(seq)[-1].argmax())
        greedy.append(nxt)
        seq = torch.cat([seq, torch.tensor([nxt])])
    assert out == greedy
