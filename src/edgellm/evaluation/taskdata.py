"""Task data: a JSONL file of examples with expected outputs (and an optional JSON schema), read and checked.

One example a line, in any of three shapes:

* ``{"messages": [{"role": "user", "content": ...}, ...], "expected": ...}``: chat turns; without
  ``expected`` the last message must be the assistant's, and it is the expected output;
* ``{"prompt": "...", "completion": "..."}`` (or ``"expected"`` for ``"completion"``): plain text;
* ``{"text": "...", "expected": ...}``: one user message (``examples/smart_home/commands.jsonl``).

The same lines train a model (``edgellm finetune --task causal-lm``: the completion is the answer)
and score it (``evaluation/task.py``). An example's answer is JSON when the task has a schema or the
expected output is not a string (a string expected under a schema is parsed); every JSON answer
must validate against the schema. This module also holds what scoring needs without a model:
``parse_reply`` (a reply's JSON), ``similarity`` (normalized edit similarity) and ``wilson`` (the 95%
interval reported next to every accuracy). Deliberately absent: several expected answers per
example, and multi-turn scoring (only the final answer is compared).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgeLLMError


@dataclass(frozen=True)
class Example:
    """One task example: the chat turns (or the plain prompt) before the answer, and the expected answer."""

    messages: tuple | None
    prompt: str | None
    expected: object
    line: int


@dataclass
class TaskSet:
    """The examples of one task file, its schema (or None) and whether answers are JSON.

    A list-like of ``Example`` (``len``, indexing and slicing), so it can stand where rows do.
    """

    path: str
    examples: list[Example]
    schema: dict | None = None
    json_answers: bool = False
    fields: tuple = field(default=())        # the expected object's keys, in order (per-field accuracy)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    def __iter__(self):
        return iter(self.examples)

    @property
    def chat(self) -> bool:
        return any(e.messages is not None for e in self.examples)

    def digest(self) -> str:
        """A hash of the examples and the schema (a cache key: an edited task file is a new protocol)."""
        body = [[e.messages, e.prompt, e.expected] for e in self.examples]
        return hashlib.sha256(json.dumps([body, self.schema], sort_keys=True).encode()).hexdigest()[:16]


def read_task(path, schema=None) -> TaskSet:
    """Read the task file *path* (and the JSON schema *schema*: a path or a dict); refuse what cannot be scored.

    >>> t = read_task("examples/smart_home/commands.jsonl", "examples/smart_home/schema.json")   # doctest: +SKIP
    >>> len(t), t.json_answers, t.fields                                                          # doctest: +SKIP
    (30, True, ('device', 'action', 'room', 'value'))
    """
    p = Path(path)
    if not p.is_file():
        raise EdgeLLMError(f"task file '{path}' does not exist", "pass a JSONL file of examples")
    schema = _read_schema(schema)
    examples = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise EdgeLLMError(f"{p.name} line {n} is not JSON ({e})", "one JSON object a line") from e
        examples.append(_example(row, n, p.name))
    if not examples:
        raise EdgeLLMError(f"task file '{path}' has no examples", "one JSON object a line")
    missing = [e.line for e in examples if e.expected is None]
    if missing:
        what = "has no expected outputs" if len(missing) == len(examples) else f"lines {missing[:5]} have no expected output"
        raise EdgeLLMError(f"task file '{p.name}' {what}",
                           'give each example "expected", a "completion", or a final assistant message')
    json_answers = schema is not None or any(not isinstance(e.expected, str) for e in examples)
    if json_answers:
        examples = [_checked_json(e, schema, p.name) for e in examples]
    fields = tuple(examples[0].expected) if json_answers and isinstance(examples[0].expected, dict) else ()
    return TaskSet(str(path), examples, schema, json_answers, fields)


def _read_schema(schema):
    if schema is None or isinstance(schema, dict):
        return schema
    p = Path(schema)
    if not p.is_file():
        raise EdgeLLMError(f"schema file '{schema}' does not exist", "pass a JSON schema file")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise EdgeLLMError(f"schema file '{schema}' is not JSON ({e})", "fix the schema file") from e


def _example(row, n: int, name: str) -> Example:
    if not isinstance(row, dict):
        raise EdgeLLMError(f"{name} line {n} is not a JSON object", '{"messages": [...], "expected": ...}')
    expected = row.get("expected", row.get("completion"))
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs):
            raise EdgeLLMError(f"{name} line {n}: messages must be a list of {{role, content}} strings",
                               '[{"role": "user", "content": "..."}]')
        if expected is None and msgs[-1]["role"] == "assistant":
            expected, msgs = msgs[-1]["content"], msgs[:-1]
        if not msgs:
            raise EdgeLLMError(f"{name} line {n}: no message before the answer", "add the user's message")
        return Example(tuple(dict(m) for m in msgs), None, expected, n)
    if "prompt" in row or "text" in row:
        key = "prompt" if "prompt" in row else "text"
        if not isinstance(row[key], str):
            raise EdgeLLMError(f"{name} line {n}: {key} must be a string", f'"{key}": "..."')
        if key == "text":
            return Example(({"role": "user", "content": row["text"]},), None, expected, n)
        return Example(None, row["prompt"], expected, n)
    raise EdgeLLMError(f"{name} line {n} has no messages, prompt or text", '{"messages": [...], "expected": ...}')


def _checked_json(e: Example, schema, name: str) -> Example:
    expected = e.expected
    if isinstance(expected, str):
        try:
            expected = json.loads(expected)
        except ValueError as err:
            raise EdgeLLMError(f"{name} line {e.line}: the expected output is not JSON ({err})",
                               "JSON tasks need JSON answers (or drop --schema for free text)") from err
    if schema is not None and not schema_valid(expected, schema):
        raise EdgeLLMError(f"{name} line {e.line}: the expected output fails the task's own schema "
                           f"({schema_error(expected, schema)})", "fix the example or the schema")
    return Example(e.messages, e.prompt, expected, e.line)


def schema_error(value, schema) -> str | None:
    """The first validation error of *value* against *schema*, or None when it is valid."""
    import jsonschema

    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise EdgeLLMError(f"invalid JSON schema: {e.message}", "fix the schema (see json-schema.org)") from e
    err = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
    return None if err is None else err.message


def schema_valid(value, schema) -> bool:
    return schema_error(value, schema) is None


def parse_reply(reply: str):
    """The JSON value in *reply*: the whole reply, else its first ``{`` to its last ``}``; None when neither parses.

    >>> parse_reply('Sure: {"a": 1}'), parse_reply("no")
    ({'a': 1}, None)
    """
    text = reply.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        return json.loads(text[start:end + 1])
    except ValueError:
        return None


def same_json(a, b) -> bool:
    """Equal JSON values, with booleans never equal to numbers (``True == 1`` in Python)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return a == b


def normalize_text(s: str) -> str:
    return " ".join(s.split())


def similarity(a: str, b: str) -> float:
    """Normalized edit similarity: 1 − Levenshtein distance / the longer length (1.0 for two empty strings).

    >>> similarity("kitten", "sitting")
    0.5714285714285714
    """
    a, b = normalize_text(a), normalize_text(b)
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1 - prev[-1] / max(len(a), len(b))


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion *k* / *n* ((0, 1) when *n* is 0).

    >>> [round(x, 3) for x in wilson(6, 30)]
    [0.095, 0.373]
    """
    if n <= 0:
        return (0.0, 1.0)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at k = 0 (k = n) the lower (upper) bound is exactly 0 (1); the formula gives it only to rounding
    return (0.0 if k <= 0 else max(0.0, centre - half), 1.0 if k >= n else min(1.0, centre + half))
