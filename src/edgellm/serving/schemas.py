"""Request bodies of the OpenAI-compatible API (pydantic), and the OpenAI-style error object.

Only the fields edgellm honours are declared; unknown fields are accepted and ignored, as the OpenAI
API's clients send many optional ones. Fields that would change the meaning of a request and that we
cannot honour (``n > 1``, ``logprobs``, tools) are refused with a 400 rather than silently ignored, as is text that
is not valid Unicode (a lone surrogate escape such as ``"\\ud800"``, which JSON allows but UTF-8 cannot carry) and a
``seed`` outside the signed 64-bit range the runtimes' generators take, and a temperature between 0 and 0.001 (dividing
the logits by it overflows; 0 means greedy).
Deliberately absent: response models (the JSON is built by hand in ``app.py``, which keeps it exact).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SEED_RANGE = (-(2**63), 2**63 - 1)      # torch.Generator.manual_seed and the OpenAI API both take a signed int64
MIN_TEMPERATURE = 1e-3                  # below it (but above 0) logits / temperature overflow to inf: NaN probabilities


def _refused(name: str, message: str):
    """A validator of field *name* that refuses any set value with *message* (the client gets a 400).

    >>> class R(BaseModel):
    ...     tools: Optional[list] = None
    ...     _no_tools = _refused("tools", "tools are not supported")
    >>> R(tools=[]).tools, R().tools
    ([], None)
    """

    def check(cls, v):
        if v:
            raise ValueError(message)
        return v

    return field_validator(name)(classmethod(check))


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Optional[Union[str, list[str]]] = Field(default=None, validate_default=True)
    seed: Optional[int] = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request is supported")
    logprobs: Optional[Union[bool, int]] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of at most 4 non-empty strings")
        return stops

    _no_logprobs = _refused("logprobs", "logprobs are not supported by this server")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        if 0 < v < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        bad = _lone_surrogate(data)
        if bad is not None:
            raise ValueError(f"the request holds text that is not valid Unicode (a lone surrogate, {bad!r}); "
                             "send UTF-8 text")
        return data

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = "output"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaSpec] = None

    def schema_dict(self) -> Optional[dict]:
        """The JSON schema to enforce, or None for plain text. ``json_object`` means any JSON object."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "object"}
        if self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is 'json_schema'")
        return self.json_schema.schema_


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Any]] = None

    _no_tools = _refused("tools", "tools are not supported; use response_format with a JSON schema instead")

    def budget(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Request):
    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(default=16, ge=1)      # the OpenAI default for completions
    echo: bool = False
    response_format: Optional[ResponseFormat] = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request is supported")
            return v[0]
        return v

    def budget(self) -> Optional[int]:
        return self.max_tokens


def _lone_surrogate(value, depth: int = 0):
    """The first string (key or value) in *value* that UTF-8 cannot encode, or None.

    >>> _lone_surrogate({"messages": [{"content": "ok \\ud800"}]}) is not None, _lone_surrogate(["fine", 1])
    (True, None)
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value[:40]
        return None
    items = value.items() if isinstance(value, dict) else value if isinstance(value, list) and depth < 64 else ()
    for item in items:
        for part in (item if isinstance(value, dict) else (item,)):
            bad = _lone_surrogate(part, depth + 1)
            if bad is not None:
                return bad
    return None


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI error object.

    >>> error_body("bad", code="x")["error"]["code"]
    'x'
    """
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
