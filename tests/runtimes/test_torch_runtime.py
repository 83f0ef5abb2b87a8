import torch

from edgellm.models import load, model_bytes
from edgellm.runtimes import open_runtime, pick_runtime
from edgellm.runtimes.base import sample_next
from edgellm.runtimes.torch import TorchRuntime, best_device


def test_generate_matches_hf_greedy(tiny_llama):
    m = load(tiny_llama)
    rt = open_runtime(m)
    ids = torch.arange(10, 30)
    ours = list(rt.generate(ids, 12))
    with torch.no_grad():
        ref = m.model.generate(ids.view(1, -1), max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, 20:].tolist()
    assert ours == ref


def test_logits_match_forward(tiny_llama):
    m = load(tiny_llama)
    rt = TorchRuntime(m)
    ids = torch.arange(3, 19)
    with torch.no_grad():
        assert torch.equal(rt.logits(ids), m.model(ids.view(1, -1)).logits[0].float())


def test_weight_bytes_tied(tiny_llama):
    m = load(tiny_llama)
    rt = TorchRuntime(m)
    assert rt.weight_bytes() == model_bytes(m.model)  # tied embedding is read once, by lm_head


def test_weight_bytes_untied_excludes_input_embedding(tmp_path):
    from conftest import make_tiny_llama

    m = load(make_tiny_llama(tmp_path / "u", tie_word_embeddings=False))
    emb = m.model.get_input_embeddings().weight
    assert TorchRuntime(m).weight_bytes() == model_bytes(m.model) - emb.numel() * 4


def test_stop_ids_and_sampling_seeded(tiny_llama):
    rt = open_runtime(tiny_llama)
    ids = torch.arange(10, 20)
    first = next(iter(rt.generate(ids, 5)))
    assert list(rt.generate(ids, 5, stop_ids={first})) == [first]
    a = list(rt.generate(ids, 8, temperature=1.0, top_p=0.9, seed=3))
    b = list(rt.generate(ids, 8, temperature=1.0, top_p=0.9, seed=3))
    assert a == b


def test_sample_next_top_p_keeps_best():
    logits = torch.tensor([5.0, 0.0, 0.0, 0.0])
    g = torch.Generator().manual_seed(0)
    assert all(sample_next(logits, 1.0, 0.5, g) == 0 for _ in range(20))


def test_device_choice_on_this_machine():
    assert best_device() in ("cuda", "mps", "cpu")
    assert pick_runtime("model.onnx") == "onnxruntime" and pick_runtime("folder") == "torch"
