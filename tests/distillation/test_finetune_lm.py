"""Task fine-tuning of a causal LM on tiny random models: completion-only labels, LoRA merge/adapter, resume, KD."""

import json

import pytest
import torch
from conftest import make_chat_llama, smart_home_rows as task_rows

from edgellm.distillation import TuneConfig, finetune_lm
from edgellm.distillation.examples import collate, encode_example, example_data
from edgellm.distillation.losses import IGNORE, hard_loss
from edgellm.distillation.lora import lora_targets
from edgellm.distillation.tune import completion_logits
from edgellm.errors import EdgeLLMError
from edgellm.models import load


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    return make_chat_llama(tmp_path_factory.mktemp("tiny") / "chat-llama")


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", task_rows())


TINY = dict(rank=8, lora_alpha=16, lora_dropout=0.0, steps=8, lr=5e-3, batch_size=4, warmup=1, eval_every=4,
            val_rows=8, max_length=200, seed=0)


def test_labels_are_ignored_exactly_on_the_prompt(chat_llama):
    tok = load(chat_llama).tokenizer
    row = task_rows(1)[0]
    ex = encode_example(tok, row, 200)
    head = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
    assert ex.n_prompt == len(tok(head, add_special_tokens=False)["input_ids"])
    assert tok.decode(ex.ids[ex.n_prompt:]) == row["messages"][-1]["content"] + "<|im_end|>\n"
    plain = encode_example(tok, {"prompt": "turn on:", "completion": "{}"}, 200)
    assert tok.decode(plain.ids[plain.n_prompt:]) == "{}" + tok.eos_token
    ids, mask, labels = collate([ex, plain], tok.pad_token_id)
    for i, e in enumerate([ex, plain]):
        assert (labels[i, : e.n_prompt] == IGNORE).all() and (labels[i, len(e.ids):] == IGNORE).all()
        assert labels[i, e.n_prompt : len(e.ids)].tolist() == e.ids[e.n_prompt:]
        assert mask[i].sum() == len(e.ids)
    # 'expected' stands in for the final assistant message
    alt = encode_example(tok, {"messages": row["messages"][:-1], "expected": json.loads(row["messages"][-1]["content"])}, 200)
    assert alt.ids == ex.ids and alt.n_prompt == ex.n_prompt


def test_prompt_positions_get_zero_gradient_and_the_head_runs_on_completions_only(chat_llama):
    m = load(chat_llama)
    rows = [encode_example(m.tokenizer, r, 200) for r in task_rows(3)]
    ids, mask, labels = collate(rows, m.tokenizer.pad_token_id)
    full = m.model(input_ids=ids, attention_mask=mask).logits.detach().requires_grad_(True)
    loss = hard_loss(full[:, :-1], labels[:, 1:])
    loss.backward()
    predicts_prompt = labels[:, 1:] == IGNORE
    assert (full.grad[:, :-1][predicts_prompt] == 0).all() and (full.grad[:, -1] == 0).all()
    assert (full.grad[:, :-1][~predicts_prompt].abs().sum(-1) > 0).all()
    z, y = completion_logits(m.model, ids, mask, labels)
    assert torch.allclose(z, full.detach()[:, :-1][~predicts_prompt], atol=1e-5)
    assert torch.allclose(hard_loss(z, y), m.model(input_ids=ids, attention_mask=mask, labels=labels).loss, atol=1e-5)


def test_finetune_lowers_the_completion_loss(chat_llama, task_file, tmp_path):
    r = finetune_lm(chat_llama, task_file, TuneConfig(**{**TINY, "steps": 30, "eval_every": 15}), progress=False)
    losses = [x["loss"] for x in r.train_log]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert r.evals[-1]["val_nll"] < r.evals[0]["val_nll"] and r.evals[-1]["val_rows"] == 8
    assert r.evals[-1]["val_token_accuracy"] > r.evals[0]["val_token_accuracy"]
    assert r.tokens_seen == sum(x["tokens_seen"] - y["tokens_seen"] for x, y in zip(r.train_log[1:], r.train_log)) + \
        r.train_log[0]["tokens_seen"]


def test_merged_folder_equals_the_adapter_and_loads_with_transformers(chat_llama, task_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = finetune_lm(chat_llama, task_file, TuneConfig(**TINY), out=tmp_path / "merged", progress=False)
    adapter = finetune_lm(chat_llama, task_file, TuneConfig(**TINY, merge=False), out=tmp_path / "adapter", progress=False)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and not (tmp_path / "adapter" / "config.json").exists()
    assert (tmp_path / "merged" / "distill" / "curves.png").stat().st_size > 1000
    assert not (tmp_path / "merged.run").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in plain.named_parameters())
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(chat_llama), tmp_path / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(chat_llama)
    ids = torch.tensor([[1, 5, 9, 12, 40, 41, 7]])
    with torch.no_grad():
        a, b, c = plain(ids).logits, peft_model(ids).logits, base(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert (a - c).abs().max() > 1e-2                      # and the training did change the model
    assert merged.evals[-1]["val_nll"] == pytest.approx(adapter.evals[-1]["val_nll"], rel=1e-5)


def test_resume_after_ctrl_c_gives_the_same_weights(chat_llama, task_file, tmp_path):
    cfg = TuneConfig(**{**TINY, "lora_dropout": 0.1, "grad_accum": 2, "save_every": 3})
    full = finetune_lm(chat_llama, task_file, cfg, out=tmp_path / "full", progress=False)

    def interrupt(step, rec):
        if step == 5:
            raise KeyboardInterrupt

    cut = finetune_lm(chat_llama, task_file, cfg, out=tmp_path / "cut", on_step=interrupt, progress=False)
    assert cut.interrupted and cut.steps == 5 and cut.checkpoint.endswith("checkpoint-000005")
    assert (tmp_path / "cut.run" / "checkpoint-000005" / "trainer_state.json").is_file()
    assert not (tmp_path / "cut").exists()
    with pytest.raises(EdgeLLMError, match="different run.*config"):
        finetune_lm(chat_llama, task_file, cfg.replace(lr=1e-3), out=tmp_path / "x", resume=cut.checkpoint, progress=False)
    resumed = finetune_lm(chat_llama, task_file, cfg, out=tmp_path / "cut", resume=tmp_path / "cut.run", progress=False)
    assert [x["step"] for x in resumed.train_log] == list(range(1, 9))
    assert [x["loss"] for x in resumed.train_log] == pytest.approx([x["loss"] for x in full.train_log], rel=1e-6)
    sa, sb = full.student.model.state_dict(), resumed.student.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_teacher_kd_on_the_completions(chat_llama, task_file):
    r = finetune_lm(chat_llama, task_file, TuneConfig(**{**TINY, "alpha": 0.25, "temperature": 2.0}),
                    teacher=chat_llama, progress=False)
    first = r.train_log[0]
    assert first["soft"] == pytest.approx(0.0, abs=1e-6)       # LoRA starts at B = 0: the student is the teacher
    assert first["loss"] == pytest.approx(0.25 * first["hard"], rel=1e-5)
    later = r.train_log[-1]
    assert later["soft"] > 0 and later["loss"] == pytest.approx(0.25 * later["hard"] + 0.75 * later["soft"], rel=1e-4)
    assert r.config["alpha"] == 0.25
    with pytest.raises(EdgeLLMError, match="never used"):
        finetune_lm(chat_llama, task_file, TuneConfig(**{**TINY, "alpha": 1.0}), teacher=chat_llama, progress=False)
    with pytest.raises(EdgeLLMError, match="needs a teacher"):
        finetune_lm(chat_llama, task_file, TuneConfig(**{**TINY, "alpha": 0.5}), progress=False)


def test_full_finetune_without_adapters(chat_llama, task_file):
    r = finetune_lm(chat_llama, task_file, TuneConfig(**{**TINY, "rank": 0, "lr": 1e-3}), progress=False)
    assert type(r.student.model).__name__ == "LlamaForCausalLM"
    assert r.train_log[-1]["loss"] < r.train_log[0]["loss"]


def test_targets_and_bad_examples(chat_llama, tiny_llama, tmp_path):
    m = load(chat_llama).model
    assert lora_targets(m) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert lora_targets(m, ("q", "v_proj")) == ["q_proj", "v_proj"]
    with pytest.raises(EdgeLLMError, match="LoRA target 'attn_x' matches no module"):
        lora_targets(m, ("attn_x",))
    with pytest.raises(EdgeLLMError, match="not float linear"):
        lora_targets(m, ("input_layernorm",))
    tok = load(chat_llama).tokenizer
    with pytest.raises(EdgeLLMError, match="no completion"):
        encode_example(tok, {"messages": [{"role": "user", "content": "hi"}]}, 64)
    with pytest.raises(EdgeLLMError, match="no completion"):
        encode_example(tok, {"prompt": "hi", "completion": " "}, 64)
    with pytest.raises(EdgeLLMError, match="needs a chat template"):
        encode_example(load(tiny_llama).tokenizer, task_rows(1)[0], 64)
    with pytest.raises(EdgeLLMError, match="has no examples"):
        example_data(tok, write_jsonl(tmp_path / "empty.jsonl", []), 64)
    with pytest.raises(EdgeLLMError, match="example 2: .*not JSON|:2: not JSON"):
        (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
        example_data(tok, tmp_path / "bad.jsonl", 64)
