"""Task examples for fine-tuning a causal LM: JSONL → token ids with the loss on the completion only.

Each line is one example, in one of the two shapes ``edgellm eval --task`` reads too:

* ``{"messages": [{"role": ..., "content": ...}, ...]}``: a chat. The last message must be the
  assistant's: it is the completion; the messages before it are the prompt, rendered with
  the model's chat template and ``add_generation_prompt=True`` (what the model sees when it is
  served), the completion is the rest of the template's rendering of the whole chat (so the
  end-of-turn marker is learned too). A chat without a final assistant message takes its
  completion from ``"expected"`` (a string, or JSON written compactly).
* ``{"prompt": ..., "completion": ...}`` (or ``"expected"`` for the completion): plain text, no
  template; the completion is followed by the tokenizer's EOS token.

Labels are -100 on the prompt (and on padding), the token ids on the completion, so the
cross-entropy counts completion tokens only. Examples are cut to ``max_len`` tokens from the
right (an example whose prompt alone fills ``max_len`` is refused, since it has nothing to learn).
Micro-batch *k* is a pure function of (seed, k), as in ``batches.py``. Deliberately absent:
multi-turn losses (only the final assistant turn is trained), packing several examples per row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import resolve_data_path
from ..errors import EdgeLLMError
from .batches import _seeded_perm
from .losses import IGNORE


@dataclass
class Example:
    ids: list[int]
    n_prompt: int                  # the first n_prompt ids are the prompt (labels -100)


@dataclass
class ExampleData:
    train: list[Example]
    val: list[Example]
    fingerprint: str
    source: str

    kind = "causal-lm-task"

    def batch_indices(self, k: int, batch_size: int, seed: int) -> list[int]:
        """Example indices of global micro-batch *k* (epoch e visits the examples in ``randperm(seed + e)``)."""
        n = len(self.train)
        out = []
        for j in range(k * batch_size, (k + 1) * batch_size):
            epoch, pos = divmod(j, n)
            out.append(int(_seeded_perm(n, seed * 100_003 + epoch)[pos]))
        return out


def read_jsonl(path) -> list[dict]:
    """The JSON objects of a JSONL file (blank lines skipped); one-line errors name the line.

    >>> read_jsonl("train.jsonl")[0]["messages"][-1]["role"]                    # doctest: +SKIP
    'assistant'
    """
    path = resolve_data_path(path)
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EdgeLLMError(f"{path}:{i}: not JSON ({e.msg})", "write one JSON object per line") from None
        if not isinstance(row, dict):
            raise EdgeLLMError(f"{path}:{i}: a line must be a JSON object", 'use {"messages": [...]} or {"prompt": ..., "completion": ...}')
        rows.append(row)
    return rows


def _text(value) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def split_example(row: dict, where: str = "") -> tuple[list[dict] | str, str]:
    """(prompt messages or prompt text, completion text) of one example; EdgeLLMError without a completion.

    >>> split_example({"prompt": "2+2=", "completion": "4"})
    ('2+2=', '4')
    >>> split_example({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    ([{'role': 'user', 'content': 'hi'}], 'hello')
    """
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise EdgeLLMError(f"{where}'messages' must be a list of {{role, content}} objects", "fix the example")
        if msgs and msgs[-1]["role"] == "assistant" and (msgs[-1].get("content") or "").strip():
            return msgs[:-1], msgs[-1]["content"]
        completion = _text(row.get("expected"))
        if completion is None or not completion.strip():
            raise EdgeLLMError(f"{where}no completion (no final assistant message, no 'expected')",
                               "end each chat with the assistant's reply, or give 'expected'")
        return msgs, completion
    if "prompt" in row:
        completion = _text(row.get("completion", row.get("expected")))
        if completion is None or not completion.strip():
            raise EdgeLLMError(f"{where}no completion", "give 'completion' (or 'expected') with the prompt")
        return str(row["prompt"]), completion
    raise EdgeLLMError(f"{where}neither 'messages' nor 'prompt'",
                       'use {"messages": [...]} or {"prompt": ..., "completion": ...}')


def encode_example(tok, row: dict, max_len: int, where: str = "") -> Example:
    """Token ids of one example and where its completion starts (chat template for ``messages``).

    >>> ex = encode_example(tok, {"prompt": "2+2=", "completion": "4"}, 128)    # doctest: +SKIP
    >>> ex.ids[ex.n_prompt:]                                                     # doctest: +SKIP
    """
    prompt, completion = split_example(row, where)
    if isinstance(prompt, list):
        if not getattr(tok, "chat_template", None):
            raise EdgeLLMError(f"{where}a 'messages' example needs a chat template, and the model's tokenizer has none",
                               "use a chat model, set tokenizer.chat_template, or write {prompt, completion} examples")
        head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        whole = tok.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
        if not whole.startswith(head):
            raise EdgeLLMError(f"{where}the chat template renders the prompt differently with the reply appended",
                               "use {prompt, completion} examples for this model")
        tail = whole[len(head):]
    else:
        head, tail = prompt, completion + (tok.eos_token or "")
    p_ids = tok(head, add_special_tokens=False)["input_ids"]
    c_ids = tok(tail, add_special_tokens=False)["input_ids"]
    if len(p_ids) >= max_len:
        raise EdgeLLMError(f"{where}the prompt alone has {len(p_ids)} tokens, not fewer than max_len={max_len}",
                           "raise --max-len or shorten the prompt")
    return Example((p_ids + c_ids)[:max_len], len(p_ids))


def example_data(tok, data, max_len: int, eval_data=None, val_rows: int = 0) -> ExampleData:
    """Encoded examples from a JSONL path or a list of dicts; validation = *eval_data*, else the last
    *val_rows* examples (at most a fifth of the set).

    >>> ds = example_data(tok, "train.jsonl", 128, val_rows=50)                  # doctest: +SKIP
    """
    def encode(source):
        rows, name = (list(source), "rows") if isinstance(source, (list, tuple)) else (read_jsonl(source), str(source))
        return [encode_example(tok, r, max_len, f"{name}, example {i + 1}: ") for i, r in enumerate(rows)], name

    examples, source = encode(data)
    if eval_data is not None:
        train, val = examples, encode(eval_data)[0]
    else:
        hold = min(val_rows, len(examples) // 5)
        train, val = (examples[:-hold], examples[-hold:]) if hold else (examples, [])
    if not train:
        raise EdgeLLMError(f"the training set '{source}' has no examples", "pass a JSONL file with one example per line")
    h = hashlib.sha256(f"task{max_len}".encode())
    for ex in train:
        h.update(json.dumps([ex.n_prompt, ex.ids]).encode())
    return ExampleData(train, val, h.hexdigest()[:16], source)


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) ``[B, L]``, right-padded to the longest; labels -100 off the completion.

    Labels are *not* shifted: position t's label is token t, as HF's causal-LM loss expects.

    >>> ids, mask, labels = collate([Example([5, 6, 7], 2), Example([5, 8], 1)], 0)
    >>> labels.tolist()
    [[-100, -100, 7], [-100, 8, -100]]
    """
    L = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), L), dtype=torch.long)
    labels = torch.full((len(examples), L), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.n_prompt:n] = ids[i, e.n_prompt:n]
    return ids, mask, labels
