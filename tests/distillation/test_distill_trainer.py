"""The training loop on tiny random models: loss goes down, resume is exact, bad input is refused."""

import json

import pytest
import torch
from conftest import make_tiny_llama, synthetic_text

from edgellm.distillation import DistillConfig, distill, finetune, student_from_teacher
from edgellm.errors import EdgeLLMError
from edgellm.models import load

@pytest.fixture(autouse=True)
def one_thread():
    # tiny ops on a shared, oversubscribed CPU run ~100x slower with 2 spinning OpenMP threads
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(steps=6, lr=3e-3, batch_size=2, seq_len=32, warmup=1, val_tokens=128, eval_every=3, seed=0)


@pytest.fixture(scope="module")
def teacher(tiny_llama):
    return load(tiny_llama)


def test_distill_lowers_the_loss_and_writes_a_plain_hf_folder(teacher, text_file, tmp_path):
    student = student_from_teacher(teacher, keep_layers=2)
    before = [p.clone() for p in teacher.model.parameters()]
    cfg = DistillConfig(alpha=0.5, temperature=2.0, **{**TINY, "steps": 12, "eval_every": 6})
    r = distill(teacher, student, text_file, cfg, out=tmp_path / "s", progress=False)
    losses = [x["loss"] for x in r.train_log]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert r.evals[-1]["val_nll"] < r.evals[0]["val_nll"]
    assert r.tokens_seen == 12 * 2 * 31 and r.steps == 12
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.model.parameters()))  # teacher untouched
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert m.config.num_hidden_layers == 2
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.allclose(m(ids).logits, r.student.model(ids).logits, atol=1e-5)
    assert (tmp_path / "s" / "distill" / "curves.png").stat().st_size > 1000
    evals = [json.loads(x) for x in (tmp_path / "s" / "distill" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 6, 12]
    assert not (tmp_path / "s.run").exists()


def _trace(teacher, text_file, tmp_path, name, **kw):
    cfg = DistillConfig(alpha=0.3, temperature=2.0, save_every=3, grad_accum=2, **TINY)
    return distill(teacher, student_from_teacher(teacher, keep_layers=2), text_file, cfg, out=tmp_path / name,
                   progress=False, **kw)


def test_resume_after_interrupt_gives_the_same_loss_trace(teacher, text_file, tmp_path):
    full = _trace(teacher, text_file, tmp_path, "full")

    def interrupt(step, rec):
        if step == 4:
            raise KeyboardInterrupt

    cut = _trace(teacher, text_file, tmp_path, "cut", on_step=interrupt)
    assert cut.interrupted and cut.steps == 4 and cut.checkpoint.endswith("checkpoint-000004")
    resumed = _trace(teacher, text_file, tmp_path, "cut", resume=tmp_path / "cut.run")
    a = [(x["step"], x["loss"]) for x in full.train_log]
    b = [(x["step"], x["loss"]) for x in resumed.train_log]
    assert [s for s, _ in b] == list(range(1, 7))
    assert [x for _, x in b] == pytest.approx([x for _, x in a], rel=1e-6)
    sa, sb = full.student.model.state_dict(), resumed.student.model.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert resumed.tokens_seen == full.tokens_seen


def test_checkpoint_from_a_different_run_is_refused(teacher, text_file, tmp_path):
    def interrupt(step, rec):
        raise KeyboardInterrupt

    cut = _trace(teacher, text_file, tmp_path, "a", on_step=interrupt)
    cfg = DistillConfig(alpha=0.9, temperature=2.0, save_every=3, grad_accum=2, **TINY)
    with pytest.raises(EdgeLLMError, match="different run.*config"):
        distill(teacher, student_from_teacher(teacher, keep_layers=2), text_file, cfg, out=tmp_path / "b",
                resume=cut.checkpoint, progress=False)
    with pytest.raises(EdgeLLMError, match="not a distillation checkpoint"):
        distill(teacher, student_from_teacher(teacher, keep_layers=2), text_file, cfg, out=tmp_path / "c",
                resume=tmp_path, progress=False)


def test_hidden_loss_with_projection_and_topk_cache(teacher, text_file, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgellm.models import Loaded

    cfgd = teacher.model.config.to_dict()
    narrow = LlamaForCausalLM(LlamaConfig(**{**cfgd, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                              "head_dim": 16}))
    student = Loaded(narrow, teacher.tokenizer, teacher.meta)
    cfg = DistillConfig(alpha=0.2, temperature=1.0, hidden_loss="0:0,1:2", topk_cache=16, **{**TINY, "steps": 8})
    r = distill(teacher, student, text_file, cfg, progress=False, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) > 0
    losses = [x["loss"] for x in r.train_log]
    assert losses[-1] < losses[0]
    with pytest.raises(EdgeLLMError, match="out of range"):
        distill(teacher, student, text_file, cfg.replace(hidden_loss="5:0"), progress=False)


def test_vocabulary_and_tokenizer_mismatch(teacher, text_file, tmp_path):
    other = load(make_tiny_llama(tmp_path / "other", vocab_size=400))
    with pytest.raises(EdgeLLMError, match="vocabulary mismatch"):
        distill(teacher, other, text_file, DistillConfig(**TINY), progress=False)
    same_size = load(make_tiny_llama(tmp_path / "same"))
    vocab = dict(same_size.tokenizer.get_vocab())
    a, b = sorted(vocab)[:2]
    same_size.tokenizer.add_tokens(["zzqx-new-token"])  # a different tokenizer with the same model vocab size
    with pytest.raises(EdgeLLMError, match="tokenizer mismatch"):
        distill(teacher, same_size, text_file, DistillConfig(**TINY), progress=False)


def test_short_or_empty_data_and_test_split(teacher, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the light is on.\n")
    with pytest.raises(EdgeLLMError, match="fewer than one window"):
        distill(teacher, student_from_teacher(teacher, keep_layers=2), short, DistillConfig(**TINY), progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(EdgeLLMError, match="empty"):
        distill(teacher, student_from_teacher(teacher, keep_layers=2), empty, DistillConfig(**TINY), progress=False)
    with pytest.raises(EdgeLLMError, match="needs a teacher"):
        distill(None, teacher, short, DistillConfig(**TINY), progress=False)


def test_recovery_keeps_sparsity_and_quantizes(teacher, text_file):
    import copy

    from edgellm.distillation.fakequant import block_linears, fake_quantize
    from edgellm.models import Loaded

    model = copy.deepcopy(teacher.model)
    for lin in block_linears(model):   # a 2:4-style pattern: zero the two smallest of every four
        W = lin.weight.data.view(-1, 4)
        W.scatter_(1, W.abs().argsort(1)[:, :2], 0.0)
    r = distill(teacher, Loaded(model, teacher.tokenizer, teacher.meta), text_file,
                DistillConfig(alpha=0.0, fake_quant_bits=4, fake_quant_group=32, keep_sparsity=True, **TINY), progress=False)
    for lin in block_linears(r.student.model):
        W = lin.weight.data
        assert (W.view(-1, 4) == 0).sum(1).min() >= 2
        assert torch.allclose(W, fake_quantize(W, 4, 32), atol=1e-6)   # already on the 4-bit grid
    assert r.train_log[-1]["loss"] < r.train_log[0]["loss"]


def test_finetune_classifier_and_kd_on_class_logits(tiny_bert_cls, tsv_file, tmp_path):
    cfg = DistillConfig(steps=10, lr=5e-3, batch_size=8, warmup=1, eval_every=5, val_rows=16, seed=0)
    t = finetune(load(tiny_bert_cls, task="classification"), tsv_file, cfg, out=tmp_path / "t", progress=False)
    # (the conftest's tiny BERT tokenizer maps these words to [UNK], so accuracy cannot be the check here)
    assert [e["step"] for e in t.evals] == [0, 5, 10] and 0 <= t.evals[-1]["val_accuracy"] <= 1
    assert t.examples_seen == 80 and t.train_log[0]["soft"] == 0.0
    teacher = load(tmp_path / "t", task="classification")
    student = student_from_teacher(teacher, keep_layers=1)
    r = distill(teacher, student, tsv_file, cfg.replace(alpha=0.5, temperature=2.0), out=tmp_path / "s", progress=False)
    assert r.train_log[-1]["soft"] < r.train_log[0]["soft"]
    assert load(tmp_path / "s", task="classification").model.config.num_hidden_layers == 1
