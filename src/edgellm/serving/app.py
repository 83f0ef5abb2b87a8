"""The OpenAI-compatible HTTP API (FastAPI): chat and text completions, models, health.

``create_app(engine, config)`` builds the app around one ``Engine``. Each request is checked before it
touches the model (API key → 401, body → 400, model name → 404, empty or too long prompt / ``max_tokens`` /
context → 400, JSON schema → 400), then queued (full → 429; a request whose client goes away leaves the queue
at once), then answered as JSON or as server-sent events. Every error is an OpenAI error object
``{"error": {"message", "type", "param", "code"}}``, and
each request leaves one structured (JSON) log line (the key check and the log are ``middleware.py``). ``/health``
reports the engine's job counts (``in_flight`` returns to 0 when idle). Running the app (uvicorn, logging setup, the CLI
entry) lives in ``server.py``. Deliberately absent: embeddings, tools, logprobs, n > 1.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations, and ``Request``
# is imported inside ``create_app`` (FastAPI is an optional dependency), so they must be evaluated eagerly.
import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

from ..calibconfig import config_field
from ..errors import EdgeLLMError
from ..runtimes.constrain import SchemaCompiler
from .engine import Engine, Job, JobTimeout, QueueFull
from .middleware import LogAndAuth
from .schemas import ChatRequest, CompletionRequest, error_body

log = logging.getLogger("edgellm.serving")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and identity of one server. ``max_prompt_tokens=None`` means the model's context minus one;
    ``model_id=None`` means the artifact's name (``serve`` fills it in).

    >>> ServeConfig(port=8080, max_queue=4).max_queue
    4
    """

    model_id: str | None = config_field(None, "the id clients pass as 'model' (none: the file name)",
                                        aliases=("--model-name",))
    api_key: str | None = config_field(None, "require 'Authorization: Bearer KEY' (none: $EDGELLM_API_KEY, else no key)")
    max_queue: int = config_field(16, "requests allowed to wait; more get 429")
    max_tokens_limit: int = config_field(1024, "largest max_tokens a request may ask for")
    max_prompt_tokens: int | None = config_field(None, "longest prompt (none: context - 1)")
    timeout_s: float = config_field(120.0, "seconds per request, queueing included", aliases=("--timeout",))
    host: str = config_field("127.0.0.1", "address to bind (localhost only by default)")
    port: int = config_field(8000, "TCP port")

    def __post_init__(self):
        if self.max_queue < 1:
            raise EdgeLLMError(f"max_queue={self.max_queue} must be at least 1", "pass --max-queue 1 or more")
        if self.max_tokens_limit < 1:
            raise EdgeLLMError(f"max_tokens_limit={self.max_tokens_limit} must be at least 1", "pass --max-tokens-limit 1 or more")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise EdgeLLMError(f"max_prompt_tokens={self.max_prompt_tokens} must be at least 1", "pass --max-prompt-tokens 1 or more")
        if self.timeout_s <= 0:
            raise EdgeLLMError(f"timeout_s={self.timeout_s} must be positive", "pass --timeout 60, say")
        if not 0 <= self.port < 65536:
            raise EdgeLLMError(f"port {self.port} is out of range", "pass --port between 1 and 65535")
        if self.api_key is not None and not self.api_key:
            raise EdgeLLMError("the API key is empty", "pass a non-empty --api-key or none at all")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


def render_chat(tokenizer, messages: list[dict]) -> tuple[str, bool]:
    """The prompt text for *messages*: the tokenizer's chat template, or plain ``role: content`` lines when it
    has none. Returns (text, templated)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:", False


def _validation_message(exc) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "invalid request: " + "; ".join(parts)


def create_app(engine: Engine, config: ServeConfig, *, openapi: bool = False):
    """The FastAPI app serving *engine*. ``openapi=True`` publishes the schema at ``/openapi.json`` (the API
    fuzz test reads it); by default it stays unpublished, as do the interactive docs.

    >>> app = create_app(Engine(rt, rt.tokenizer).start(), ServeConfig(model_id="smollm2-135m"))   # doctest: +SKIP
    """
    if config.model_id is None:
        raise EdgeLLMError("the server needs a model id", "pass ServeConfig(model_id=...), or use serve(), which names it")
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.concurrency import run_in_threadpool
        from jinja2 import TemplateError
        from starlette.exceptions import HTTPException
    except ImportError as e:
        raise EdgeLLMError("serving needs FastAPI and uvicorn", "pip install 'edgellm[serve]'") from e

    tokenizer = engine.tokenizer
    context = getattr(engine.runtime, "max_positions", None)
    prompt_limit = config.max_prompt_tokens or ((context - 1) if context else 4096)
    if context:
        prompt_limit = min(prompt_limit, context - 1)
    model_cfg = getattr(getattr(engine.runtime, "model", None), "config", None)
    compiler = SchemaCompiler(tokenizer, vocab_rows=max(len(tokenizer), getattr(model_cfg, "vocab_size", 0) or 0),
                              tokenizer_lock=engine.tokenizer_lock)
    runtime_name = getattr(engine.runtime, "name", "?")
    created = int(time.time())
    app = FastAPI(title="edgellm", docs_url=None, redoc_url=None, openapi_url="/openapi.json" if openapi else None)

    # -- errors: always the OpenAI error object ---------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        request.state.error = exc.body["error"]["message"]
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc):
        msg = _validation_message(exc)
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in ctype:
            msg = f"the request body must be JSON sent with 'Content-Type: application/json' (got '{ctype}')"
        request.state.error = msg
        return JSONResponse(error_body(msg), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), code=code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc):
        log.exception("unhandled error")
        request.state.error = repr(exc)
        return JSONResponse(error_body(f"internal error: {exc}", "server_error"), status_code=500)

    # -- shared request handling ----------------------------------------------------------------
    def _check_model(name: str) -> None:
        if name != config.model_id:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{config.model_id}'",
                           param="model", code="model_not_found")

    def _budget(req, n_prompt: int) -> int:
        if n_prompt == 0:
            raise APIError(400, "the prompt is empty (0 tokens); send some text", param="prompt", code="empty_prompt")
        if n_prompt > prompt_limit:
            raise APIError(400, f"the prompt is {n_prompt} tokens long; this server accepts at most {prompt_limit}",
                           param="messages" if isinstance(req, ChatRequest) else "prompt", code="prompt_too_long")
        asked = req.budget()
        if asked is not None and asked > config.max_tokens_limit:
            raise APIError(400, f"max_tokens={asked} is above this server's limit of {config.max_tokens_limit}",
                           param="max_tokens", code="max_tokens_too_large")
        room = (context - n_prompt) if context else config.max_tokens_limit
        budget = asked if asked is not None else min(config.max_tokens_limit, room)
        if budget > room:
            raise APIError(400, f"prompt ({n_prompt} tokens) plus max_tokens ({budget}) exceeds the context "
                           f"length of {context} tokens", param="max_tokens", code="context_length_exceeded")
        return budget

    async def _processor(req, budget: int):
        fmt = getattr(req, "response_format", None)
        try:
            schema = fmt.schema_dict() if fmt is not None else None
        except ValueError as e:
            raise APIError(400, str(e), param="response_format") from e
        if schema is None:
            return None, None
        if req.stop:
            raise APIError(400, "stop cannot be combined with a JSON response_format (it could cut the JSON)",
                           param="stop")
        if not engine.supports_processor:
            raise APIError(400, f"the {runtime_name} runtime does not support constrained output",
                           param="response_format", code="unsupported")
        try:
            compiled = await run_in_threadpool(compiler.compile, schema)
            return compiler.processor(compiled, budget), schema
        except EdgeLLMError as e:
            raise APIError(400, str(e), param="response_format") from e

    async def _submit(request, req, prompt_ids: list[int], budget: int, processor):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind, payload):
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        job = Job(prompt_ids, budget, emit, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                  stop=req.stop, processor=processor, deadline=time.monotonic() + config.timeout_s)
        try:
            engine.submit(job)
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}; retry later", "rate_limit_error", code="queue_full") from e
        request.state.fields.update(prompt_tokens=len(prompt_ids), max_tokens=budget, constrained=processor is not None)
        return job, events

    def _finish(request, result) -> None:
        request.state.fields.update(completion_tokens=result.completion_tokens, finish_reason=result.finish_reason,
                                    queue_ms=round(1000 * result.queue_s, 1), generate_ms=round(1000 * result.generate_s, 1))

    def _usage(result) -> dict:
        return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens}

    def _raise_job_error(err) -> None:
        if isinstance(err, JobTimeout):
            raise APIError(504, f"{err} (the limit is {config.timeout_s:g} s)", "timeout_error", code="timeout")
        raise APIError(500, f"generation failed: {err}", "server_error")

    async def _hang_up(request) -> None:
        """Returns when the client hangs up: the body is read by now, so the next ASGI message is the disconnect."""
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except Exception:                               # the connection broke some other way: gone as well
            return

    async def _collect(request, job, events):
        """Wait for a whole answer; stop the job the moment the client goes away (a queued one frees its slot)."""
        parts, get = [], None
        gone = asyncio.ensure_future(_hang_up(request))
        try:
            while True:
                get = asyncio.ensure_future(events.get())
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    engine.cancel(job)
                    request.state.fields["finish_reason"] = "client_disconnected"
                    raise APIError(499, "the client disconnected", code="client_disconnected")
                kind, payload = get.result()
                if kind == "text":
                    parts.append(payload)
                elif kind == "error":
                    _raise_job_error(payload)
                else:
                    _finish(request, payload)
                    return "".join(parts), payload
        finally:
            gone.cancel()
            if get is not None:
                get.cancel()                            # no-op when it is done

    def _check_output(text: str, schema) -> None:
        if schema is None:
            return
        import jsonschema

        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError) as e:
            log.error(json.dumps({"event": "constraint_violation", "error": str(e)[:300], "text": text[:300]}))
            raise APIError(500, f"constrained output failed validation: {str(e)[:200]}", "server_error") from e

    def _sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def _stream(request, job, events, chunk, schema, include_usage: bool):
        """Server-sent events; ``chunk(text=None, finish=None)`` builds one chunk object."""
        try:
            first = chunk(role=True)
            if first is not None:
                yield _sse(first)
            parts = []
            while True:
                kind, payload = await events.get()
                if kind == "text":
                    parts.append(payload)
                    yield _sse(chunk(text=payload))
                elif kind == "error":
                    try:
                        _raise_job_error(payload)
                    except APIError as e:
                        request.state.error = e.body["error"]["message"]
                        yield _sse(e.body)
                    break
                else:
                    _finish(request, payload)
                    if schema is not None:
                        try:
                            _check_output("".join(parts), schema)
                        except APIError as e:
                            yield _sse(e.body)
                            break
                    yield _sse(chunk(finish=payload.finish_reason))
                    if include_usage:
                        yield _sse({**chunk(finish="-"), "choices": [], "usage": _usage(payload)})
                    break
            yield "data: [DONE]\n\n"
        finally:
            engine.cancel(job)             # the client went away (or we are done): free the slot, stop generating

    class JobStream(StreamingResponse):
        """Server-sent events that stop their job however the response ends, also when the client leaves before
        the first event (then the event generator never starts, so its ``finally`` never runs)."""

        def __init__(self, job, content):
            super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            self.job = job

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                engine.cancel(self.job)

    async def _answer(request, req, prompt_ids, chunk, body):
        """Queue *prompt_ids*; stream ``chunk(...)`` objects, or wait and return ``body(text, result)``."""
        budget = _budget(req, len(prompt_ids))
        processor, schema = await _processor(req, budget)
        job, events = await _submit(request, req, prompt_ids, budget, processor)
        if req.stream:
            return JobStream(job, _stream(request, job, events, chunk, schema, req.include_usage()))
        out, result = await _collect(request, job, events)
        _check_output(out, schema)
        return body(out, result)

    # -- endpoints --------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_id, "runtime": runtime_name, "max_queue": config.max_queue,
                **engine.counts()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_id, "object": "model", "created": created,
                                            "owned_by": "edgellm"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        _check_model(req.model)
        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from e
        with engine.tokenizer_lock:
            try:
                text, _ = render_chat(tokenizer, messages)
            except TemplateError as e:          # the template's own raise_exception: roles must alternate, ...
                raise APIError(400, f"the model's chat template refused these messages: {e}", param="messages") from e
            prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rid, now = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())

        def chunk(text=None, finish=None, role=False):
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": config.model_id,
                    "system_fingerprint": f"edgellm-{runtime_name}",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish if finish not in (None, "-") else None}]}

        def body(out, result):           # the chunk's fields, as a whole answer
            return {**chunk(), "object": "chat.completion", "usage": _usage(result),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out}, "logprobs": None,
                                 "finish_reason": result.finish_reason}]}

        return await _answer(request, req, prompt_ids, chunk, body)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        _check_model(req.model)
        with engine.tokenizer_lock:
            prompt_ids = tokenizer(req.prompt)["input_ids"]
        rid, now = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())
        prefix = req.prompt if req.echo else ""

        def chunk(text=None, finish=None, role=False):
            if role:
                return None if not prefix else chunk(text=prefix)
            return {"id": rid, "object": "text_completion", "created": now, "model": config.model_id,
                    "choices": [{"index": 0, "text": text or "", "logprobs": None,
                                 "finish_reason": finish if finish not in (None, "-") else None}]}

        def body(out, result):
            return {**chunk(), "usage": _usage(result), "choices": [{"index": 0, "text": prefix + out, "logprobs": None,
                                                                     "finish_reason": result.finish_reason}]}

        return await _answer(request, req, prompt_ids, chunk, body)

    app.state.engine, app.state.config = engine, config
    return LogAndAuth(app, config.api_key)

