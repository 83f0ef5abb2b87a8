"""Task evaluation: generate each example's answer on a runtime and score it against the expected one.

``evaluate_task(runtime, TaskSet)`` works on every runtime with ``generate`` (PyTorch, llama.cpp,
ONNX Runtime, ExecuTorch): the prompt is the example's chat turns rendered with the model's own
chat template (``add_generation_prompt``), or its plain prompt (no special tokens added: the encoding
``edgellm finetune --task causal-lm`` trains on); decoding is greedy and stops at the
tokenizer's (and the model's generation config's) end-of-sequence ids or after ``max_new_tokens``.
With ``constrained=True`` a JSON schema masks every token that would leave it
(``runtimes/constrain.py``), on any runtime whose ``generate`` takes a ``logits_processor``.

Scores: exact match (parsed JSON compared as values, or whitespace-normalized text), per-field
accuracy and JSON/schema validity for JSON answers, normalized edit similarity for free text, and the
latency of each answer (prefill + decode, tokenizing excluded); every accuracy with its 95% Wilson
interval. ``TaskRunner`` answers one example at a time (``optimize`` scores a subset first and stops
early). Deliberately absent: sampling, batching several examples, and few-shot prompt building
(put worked examples in the task's messages).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..errors import EdgeLLMError
from ..results import Result
from ..runtimes.constrain import SchemaCompiler
from .taskdata import Example, TaskSet, normalize_text, parse_reply, same_json, schema_valid, similarity, wilson


@dataclass
class TaskResult(Result):
    """What ``evaluate_task`` measured; counts out of ``n``, each accuracy with its 95% Wilson interval."""

    task: str
    runtime: str
    n: int
    constrained: bool
    exact_match: int
    accuracy: float
    interval: tuple
    json_valid: int | None
    schema_valid: int | None
    schema_interval: tuple | None
    field_accuracy: dict | None          # field -> {"accuracy", "interval"}
    mean_similarity: float | None        # free-text answers
    mean_latency_s: float
    mean_prompt_tokens: float
    mean_new_tokens: float
    rows: list


def stop_ids_for(runtime, tokenizer) -> set[int]:
    """End-of-sequence ids: the tokenizer's EOS plus the model's generation-config EOS ids (PyTorch)."""
    ids = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(getattr(runtime, "model", None), "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids


class TaskRunner:
    """Answers and scores the examples of *task* on *runtime*, one at a time.

    >>> runner = TaskRunner(rt, read_task("dev.jsonl", "schema.json"), constrained=True)   # doctest: +SKIP
    >>> runner.answer(0)["exact"]                                                          # doctest: +SKIP
    True
    """

    def __init__(self, runtime, task: TaskSet, constrained: bool = False, max_new_tokens: int = 64):
        self.rt, self.task, self.max_new_tokens = runtime, task, max_new_tokens
        self.tokenizer = getattr(runtime, "tokenizer", None)
        if self.tokenizer is None:
            raise EdgeLLMError(f"the {runtime.name} runtime gives no tokenizer for this model",
                               "evaluate a folder or .gguf file that carries its tokenizer")
        if task.chat and not getattr(self.tokenizer, "chat_template", None):
            raise EdgeLLMError("the task's examples are chat messages, but the model's tokenizer has no chat template",
                               "use a model with a chat template, or write the examples as prompt/completion")
        self.stop_ids = stop_ids_for(runtime, self.tokenizer)
        self.compiled = None
        if constrained:
            self.compiled = self._compile(task)

    def _compile(self, task: TaskSet):
        if task.schema is None:
            raise EdgeLLMError("constrained decoding needs the task's JSON schema", "add --schema schema.json")
        if "logits_processor" not in inspect.signature(self.rt.generate).parameters:
            raise EdgeLLMError(f"the {self.rt.name} runtime cannot constrain decoding (its generate takes no "
                               "logits processor)", "drop --constrained, or use another runtime")
        config = getattr(getattr(self.rt, "model", None), "config", None)
        rows = max(len(self.tokenizer), getattr(self.rt, "vocab_size", 0) or getattr(config, "vocab_size", 0) or 0)
        self.compiler = SchemaCompiler(self.tokenizer, vocab_rows=rows)
        compiled = self.compiler.compile(task.schema)
        self.compiler.processor(compiled, self.max_new_tokens)      # refuses a max_new_tokens no answer fits in
        return compiled

    def prompt_ids(self, ex: Example) -> list[int]:
        """The token ids the model sees for *ex*: its chat turns through the chat template, or its plain prompt."""
        if ex.messages is not None:
            text = self.tokenizer.apply_chat_template(list(ex.messages), tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])   # as finetune encodes it

    def generate(self, ids: list[int]) -> tuple[list[int], float]:
        """Greedy answer token ids (without the stop token) and the seconds they took."""
        proc = self.compiler.processor(self.compiled, self.max_new_tokens) if self.compiled is not None else None
        out, t0 = [], time.perf_counter()
        for tok in self.rt.generate(torch.tensor(ids, dtype=torch.long), self.max_new_tokens, stop_ids=self.stop_ids,
                                    **({"logits_processor": proc} if proc is not None else {})):
            if tok in self.stop_ids:
                break
            out.append(tok)
            if proc is not None:
                proc.update(out)
                if proc.finished():          # nothing but end-of-sequence may follow
                    break
        return out, time.perf_counter() - t0

    def answer(self, i: int) -> dict:
        """Generate example *i*'s answer and score it: the row ``evaluate_task`` reports."""
        ex = self.task[i]
        ids = self.prompt_ids(ex)
        out, seconds = self.generate(ids)
        reply = self.tokenizer.decode(out, skip_special_tokens=True)
        row = {"line": ex.line, "reply": reply, "latency_s": seconds, "prompt_tokens": len(ids), "new_tokens": len(out)}
        if not self.task.json_answers:
            row.update(exact=normalize_text(reply) == normalize_text(ex.expected),
                       similarity=similarity(reply, ex.expected))
            return row
        got = parse_reply(reply)
        row.update(parsed=got, exact=got is not None and same_json(got, ex.expected), json_ok=got is not None,
                   schema_ok=got is not None and (self.task.schema is None or schema_valid(got, self.task.schema)))
        if self.task.fields:
            row["fields"] = {f: isinstance(got, dict) and f in got and same_json(got[f], ex.expected[f])
                             for f in self.task.fields}
        return row


def evaluate_task(runtime, task: TaskSet, constrained: bool = False, max_new_tokens: int = 64,
                  limit: int | None = None, progress: bool = False) -> TaskResult:
    """Answer every example of *task* (the first *limit*) on *runtime* and score the answers.

    >>> r = evaluate_task(open_runtime("out/ft.gguf"), read_task("cmds.jsonl", "schema.json"), constrained=True)  # doctest: +SKIP
    >>> r.exact_match, r.n, [round(x, 2) for x in r.interval]                                                     # doctest: +SKIP
    (28, 30, [0.79, 0.98])
    """
    runner = TaskRunner(runtime, task, constrained, max_new_tokens)
    n = len(task) if limit is None else min(limit, len(task))
    rows = [runner.answer(i) for i in tqdm(range(n), desc="task", disable=not progress, leave=False)]
    return summarize(task, rows, runtime.name, constrained)


def summarize(task: TaskSet, rows: list[dict], runtime: str, constrained: bool) -> TaskResult:
    """The reported figures of scored *rows* (``TaskRunner.answer`` each)."""
    n = len(rows)
    k = sum(r["exact"] for r in rows)
    json_ok = sum(r["json_ok"] for r in rows) if task.json_answers else None
    schema_ok = sum(r["schema_ok"] for r in rows) if task.json_answers and task.schema is not None else None
    fields = None
    if task.fields:
        fields = {}
        for f in task.fields:
            kf = sum(r["fields"][f] for r in rows)
            fields[f] = {"accuracy": kf / n, "interval": wilson(kf, n)}
    return TaskResult(
        task=task.path, runtime=runtime, n=n, constrained=constrained, exact_match=k, accuracy=k / n,
        interval=wilson(k, n), json_valid=json_ok, schema_valid=schema_ok,
        schema_interval=wilson(schema_ok, n) if schema_ok is not None else None, field_accuracy=fields,
        mean_similarity=None if task.json_answers else sum(r["similarity"] for r in rows) / n,
        mean_latency_s=sum(r["latency_s"] for r in rows) / n,
        mean_prompt_tokens=sum(r["prompt_tokens"] for r in rows) / n,
        mean_new_tokens=sum(r["new_tokens"] for r in rows) / n, rows=rows)
