"""Run the server: open the artifact on its runtime, set up JSON logs, start uvicorn.

``serve(model, ServeConfig(...))`` blocks until interrupted (the CLI ``edgellm serve`` calls it); ``start_server(...)``
runs the same app in a background thread on a free localhost port and returns a handle with ``url`` and
``stop()`` (the tests and the smart-home example use it). Binding to anything but localhost without an
API key is allowed but logged as a warning. Deliberately absent: TLS and multi-model routing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeLLMError
from ..runtimes import open_runtime
from .app import ServeConfig, create_app
from .engine import Engine

log = logging.getLogger("edgellm.serving")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, and either the message's own JSON fields or ``msg``."""

    def format(self, record: logging.LogRecord) -> str:
        base = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        msg = record.getMessage()
        try:
            fields = json.loads(msg)
            base.update(fields if isinstance(fields, dict) else {"msg": msg})
        except ValueError:
            base["msg"] = msg
        if record.exc_info:
            base["exc"] = self.formatException(record.exc_info)
        return json.dumps(base)


def setup_json_logging(level: int = logging.INFO, stream=None) -> None:
    """Route edgellm's and uvicorn's loggers to one JSON-lines handler (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("edgellm.serving", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False


def default_model_id(artifact) -> str:
    """The name clients pass as ``model``: a built-in name as is, else the file or folder name."""
    s = str(artifact)
    return s if "/" not in s and not Path(s).exists() else Path(s.rstrip("/")).name


def open_engine(artifact, runtime: str = "auto", threads: int | None = None, max_queue: int = 16,
                device: str | None = None, load_kwargs: dict | None = None) -> Engine:
    """Open *artifact* on its runtime and wrap it in a started ``Engine``."""
    kw = dict(threads=threads, **(load_kwargs or {}))
    if device is not None:
        kw["device"] = device
    rt = open_runtime(artifact, runtime=runtime, **kw)
    tokenizer = getattr(rt, "tokenizer", None)
    if tokenizer is None:
        raise EdgeLLMError(f"the {rt.name} runtime gives no tokenizer for {artifact}",
                           "serve a folder or .gguf file that carries its tokenizer")
    return Engine(rt, tokenizer, max_queue=max_queue).start()


def _uvicorn_server(app, config: ServeConfig):
    try:
        import uvicorn
    except ImportError as e:
        raise EdgeLLMError("serving needs uvicorn", "pip install 'edgellm[serve]'") from e
    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                                         access_log=False, timeout_graceful_shutdown=5, lifespan="off"))


def serve(model, config: ServeConfig | None = None, *, runtime: str = "auto", threads: int | None = None,
          device: str | None = None, load_kwargs: dict | None = None, **fields) -> None:
    """Serve *model* (a spec or artifact) with an OpenAI-compatible API, as *config* says, until interrupted.

    *runtime*, *threads*, *device* and *load_kwargs* say how to open the model; ServeConfig fields may
    also be given as keywords (``port=8080``). ``model_id=None`` becomes the artifact's name.

    >>> serve("smollm2-135m", ServeConfig(port=8000), threads=2)        # doctest: +SKIP
    """
    if config is not None and not isinstance(config, ServeConfig):
        raise EdgeLLMError(f"config must be a ServeConfig (got {type(config).__name__})", "use ServeConfig(...)")
    config = dataclasses.replace(config, **fields) if config is not None else ServeConfig(**fields)
    if config.model_id is None:
        config = dataclasses.replace(config, model_id=default_model_id(model))
    host, port, api_key = config.host, config.port, config.api_key
    setup_json_logging()
    if host not in LOCAL_HOSTS and not api_key:
        log.warning(json.dumps({"event": "warning", "msg": f"listening on {host} without an API key: anyone on the "
                                "network can use this model; pass --api-key"}))
    t0 = time.perf_counter()
    engine = open_engine(model, runtime, threads, config.max_queue, device, load_kwargs)
    server = _uvicorn_server(create_app(engine, config), config)
    log.info(json.dumps({"event": "ready", "model": config.model_id, "runtime": engine.runtime.name,
                         "url": f"http://{host}:{port}/v1", "load_s": round(time.perf_counter() - t0, 2),
                         "max_queue": config.max_queue, "max_tokens_limit": config.max_tokens_limit,
                         "timeout_s": config.timeout_s, "auth": bool(api_key)}))
    try:
        server.run()
    finally:
        engine.stop()


@dataclass
class RunningServer:
    url: str            # http://127.0.0.1:PORT/v1
    server: object
    thread: threading.Thread
    engine: Engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.engine.stop()


def start_server(engine: Engine, config: ServeConfig, ready_timeout: float = 30.0) -> RunningServer:
    """Run the app for *engine* in a background thread on a free port of 127.0.0.1 (``config.port`` ignored).

    >>> srv = start_server(open_engine(tiny), ServeConfig(model_id="tiny"))     # doctest: +SKIP
    >>> srv.url                                                                 # doctest: +SKIP
    'http://127.0.0.1:40123/v1'
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _uvicorn_server(create_app(engine, config), config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="edgellm-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise EdgeLLMError("the server did not start", "run with --debug to see why")
        time.sleep(0.02)
    return RunningServer(f"http://127.0.0.1:{port}/v1", server, thread, engine)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_server(artifact, args: list[str] = (), port: int | None = None, ready_timeout: float = 300.0, log=None):
    """Start ``edgellm serve ARTIFACT`` in a child process on 127.0.0.1 and wait until ``/health`` answers.

    Returns (process, base_url). The caller stops it with ``process.terminate()``; *log* (a file) gets its
    JSON log lines. Used by the load test and the smart-home example, which must measure a separate process.

    >>> proc, url = spawn_server("smollm2-135m", ["--threads", "2"])      # doctest: +SKIP
    """
    import subprocess
    import urllib.request

    port = port or free_port()
    cmd = [sys.executable, "-m", "edgellm.cli", "serve", str(artifact), "--host", "127.0.0.1", "--port", str(port),
           *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EdgeLLMError(f"'{' '.join(cmd)}' exited with code {proc.returncode}", "run it by hand to see why")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise EdgeLLMError(f"the server for {artifact} did not become ready in {ready_timeout:.0f} s", "check its log")
