import torch

from edgellm.calibrate import capture_block_inputs, find_blocks, find_linears, run_blockwise
from edgellm.models import load


class Recorder:
    """Collects every linear's inputs; changes nothing."""

    def __init__(self):
        self.seen = {}
        self.blocks = []
        self.current = None

    def start_block(self, index):
        self.current = index

    def new_stats(self, name, linear):
        rec = self

        class Acc:
            def __init__(self):
                self.rows = []

            def add(self, x):
                self.rows.append(x.clone())
        acc = Acc()
        rec.seen.setdefault(rec.current, {})[name] = acc
        return acc

    def apply_block(self, index, block, stats, inputs):
        self.blocks.append(index)


def test_runner_visits_blocks_with_true_inputs(tiny_llama):
    m = load(tiny_llama).model
    calib = torch.randint(3, 300, (3, 20), generator=torch.Generator().manual_seed(0))
    path, blocks = find_blocks(m)
    assert path == "model.layers" and len(blocks) == 3
    # reference: inputs of each block's q_proj in an ordinary full forward
    ref = {i: [] for i in range(3)}
    hooks = [blocks[i].self_attn.q_proj.register_forward_hook(
        lambda mod, a, o, i=i: ref[i].append(a[0].reshape(-1, a[0].shape[-1]).clone())) for i in range(3)]
    with torch.no_grad():
        for row in calib:
            m(input_ids=row.view(1, -1))
    for h in hooks:
        h.remove()
    rec = Recorder()
    run_blockwise(m, calib, rec, progress=False)
    assert rec.blocks == [0, 1, 2]
    for i in range(3):
        got = rec.seen[i]["self_attn.q_proj"].rows
        assert len(got) == 3
        for a, b in zip(got, ref[i]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_capture_stops_before_first_block(tiny_llama):
    m = load(tiny_llama).model
    _, blocks = find_blocks(m)
    calls = []
    h = blocks[1].register_forward_hook(lambda *a: calls.append(1))
    inputs = capture_block_inputs(m, torch.randint(3, 300, (2, 10)), blocks)
    h.remove()
    assert calls == [] and len(inputs.hidden) == 2 and inputs.hidden[0].shape == (1, 10, 96)


def test_find_linears_bert(tiny_bert):
    m = load(tiny_bert).model
    path, blocks = find_blocks(m)
    assert path == "encoder.layer"
    assert "attention.self.query" in find_linears(blocks[0])


def test_hessian_stats_equals_batch_formula():
    from edgellm.calibrate import HessianStats, InputNormStats

    x = torch.randn(50, 6, dtype=torch.float64)
    s = HessianStats(6)
    for chunk in x.split(7):
        s.add(chunk)
    torch.testing.assert_close(s.H.double(), 2 * x.t() @ x / 50, rtol=1e-5, atol=1e-5)
    n = InputNormStats(6)
    for chunk in x.split(9):
        n.add(chunk)
    torch.testing.assert_close(n.l2.double(), x.norm(dim=0), rtol=1e-5, atol=1e-6)


def test_linear_stages_follow_the_dataflow(tiny_llama):
    from edgellm.calibrate import linear_stages

    m = load(tiny_llama).model
    _, blocks = find_blocks(m)
    inputs = capture_block_inputs(m, torch.randint(3, 300, (1, 12)), blocks)
    stages = linear_stages(blocks[0], find_linears(blocks[0]), inputs)
    assert [sorted(s) for s in stages] == [["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
                                           ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


class ZeroV(Recorder):
    """Zeroes v_proj when it is applied; records what the later linears saw."""

    sequential = True

    def apply_block(self, index, block, stats, inputs):
        super().apply_block(index, block, stats, inputs)
        if "self_attn.v_proj" in stats:
            block.self_attn.v_proj.weight.zero_()


def test_sequential_runner_calibrates_each_stage_on_the_changed_block(tiny_llama):
    calib = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    for sequential in (True, False):
        m = load(tiny_llama).model
        rec = ZeroV()
        rec.sequential = sequential
        calls = []
        h = m.model.layers[0].mlp.down_proj.register_forward_hook(lambda *a: calls.append(1))
        with torch.no_grad():
            run_blockwise(m, calib, rec, progress=False)
        h.remove()
        o_in = torch.cat(rec.seen[0]["self_attn.o_proj"].rows)
        # v = 0 makes attention's output 0: o_proj sees zeros only if it is observed after v_proj changed
        assert (o_in.abs().max() == 0) == sequential
        assert rec.blocks == ([0] * 4 + [1] * 4 + [2] * 4 if sequential else [0, 1, 2])
        # only the stage probe and the outputs pass reach down_proj's product: every statistics pass stops
        # once its linears have their inputs, before the last one's product
        assert len(calls) == (1 + 2 if sequential else 2)
