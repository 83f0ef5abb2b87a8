import math

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from edgellm.api import EvalConfig, evaluate
from edgellm.data import tokenize_file
from edgellm.errors import EdgeLLMError
from edgellm.evaluation import evaluate_lm, windows
from edgellm.evaluation.agreement import kl_per_token
from edgellm.models import load
from edgellm.runtimes import open_runtime


def hf_reference_ppl(model, ids, ctx):
    """A hand-written HF loop: labels=input_ids gives the mean NLL of ctx-1 predictions per window."""
    nlls, counts = [], []
    for i in range(ids.numel() // ctx):
        w = ids[i * ctx : (i + 1) * ctx].view(1, -1)
        with torch.no_grad():
            loss = model(input_ids=w, labels=w).loss
        nlls.append(loss.item() * (ctx - 1))
        counts.append(ctx - 1)
    return math.exp(sum(nlls) / sum(counts))


def test_ppl_matches_hf_reference_loop(tiny_llama, text_file):
    m = load(tiny_llama)
    ids = tokenize_file(m.tokenizer, text_file)
    rt = open_runtime(m)
    res = evaluate_lm(rt, ids, ctx=64, max_tokens=640)
    ref = hf_reference_ppl(m.model, ids[:640], 64)
    assert res.n_windows == 10 and res.n_predicted == 10 * 63 and res.n_tokens == 640
    assert abs(res.perplexity - ref) / ref < 1e-4


def test_windows_drop_partial_tail():
    ws = windows(torch.arange(10), 4)
    assert [w.tolist() for w in ws] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [w.tolist() for w in windows(torch.arange(3), 8)] == [[0, 1, 2]]


def test_kl_formula():
    ref = torch.tensor([[1.0, 0.0, -1.0]])
    cand = torch.tensor([[0.0, 0.5, 0.0]])
    p, q = F.softmax(ref, -1), F.softmax(cand, -1)
    assert torch.allclose(kl_per_token(ref, cand), (p * (p / q).log()).sum(-1), atol=1e-6)


def test_self_agreement_is_perfect(tiny_llama, text_file):
    res = evaluate(tiny_llama, EvalConfig(ppl=text_file, ctx=64, max_tokens=256, reference=tiny_llama))
    ag = res.perplexity.agreement
    assert ag.top1 == 1.0 and ag.kl < 1e-6
    assert res.reference == str(tiny_llama) and res.text == str(text_file)


def test_keyword_form_is_the_config_form(tiny_llama, text_file):
    rt = open_runtime(tiny_llama)
    by_config = evaluate(rt, EvalConfig(ppl=text_file, ctx=64, max_tokens=128))
    by_keywords = evaluate(rt, ppl=text_file, ctx=64, max_tokens=128)
    over_config = evaluate(rt, EvalConfig(ppl=text_file, ctx=32), ctx=64, max_tokens=128)
    assert by_config.perplexity.window_nlls == by_keywords.perplexity.window_nlls == over_config.perplexity.window_nlls
    assert sorted(by_config.to_dict()) == ["model", "perplexity", "runtime", "text", "threads"]
    with pytest.raises(EdgeLLMError, match="unknown option"):
        evaluate(rt, ppl=text_file, windows=3)


@pytest.mark.parametrize("fields, match", [({"ctx": 1}, "ctx"), ({"batch_size": 0}, "batch_size"),
                                           ({"max_tokens": -5}, "max_tokens"),
                                           ({"tsv": "a.tsv", "ppl": "b.txt"}, "does not go with")])
def test_eval_config_rejects_bad_values(fields, match):
    with pytest.raises(EdgeLLMError, match=match):
        EvalConfig(**fields)
    assert EvalConfig(max_tokens=0).max_tokens is None        # 0 = the whole text, as on the CLI


def test_ctx_beyond_max_position(tiny_llama, text_file):
    with pytest.raises(EdgeLLMError, match="maximum position"):
        evaluate(tiny_llama, EvalConfig(ppl=text_file, ctx=1024))


def test_cli_eval_table_and_json(tiny_llama, text_file, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, _ = run_cli("eval", tiny_llama, "--ppl", text_file, "--ctx", 64, "--max-tokens", 256, "--json", out)
    assert code == 0 and "perplexity" in stdout
    import json

    data = json.loads(out.read_text())
    assert data["perplexity"]["ctx"] == 64 and data["perplexity"]["n_tokens"] == 256


def test_cli_eval_empty_file(tiny_llama, tmp_path):
    f = tmp_path / "e.txt"
    f.write_text("")
    code, _, err = run_cli("eval", tiny_llama, "--ppl", f)
    assert code == 2 and "empty" in err


def test_classifier_accuracy(tiny_bert_cls, tsv_file):
    res = evaluate(tiny_bert_cls, EvalConfig(tsv=tsv_file, batch_size=16))
    c = res.classification
    assert c.n == 64 and 0.0 <= c.accuracy <= 1.0 and res.perplexity is None
    assert sorted(res.to_dict()) == ["classification", "model", "runtime", "threads"]


@pytest.mark.slow
def test_smollm2_ppl_sane():
    p = evaluate("smollm2-135m", EvalConfig(ctx=512, max_tokens=2048)).perplexity
    assert p.n_tokens == 2048 and p.n_windows == 4
    assert 10 < p.perplexity < 60
