"""Pipeline-parallel inference over torch.distributed: each rank runs a slice of the decoder layers.

Rank 0 is the front end: it takes token ids in and hands generated ids out. Every operation
starts with a small header that rank 0 broadcasts (op, batch, prompt length, new tokens,
micro-batches); then hidden states flow rank r → r+1 with ``isend``/``recv`` and the last rank
returns greedy token ids (or logits) to rank 0. Every rank keeps one ``DynamicCache`` per
micro-batch. With M micro-batches, rank r works on micro-batch m while rank r+1 works on m−1,
which is where batch throughput comes from; at batch 1 the ranks only take turns, so a
pipeline on one machine is never faster than one process for a single stream.

Backends: gloo on CPU, nccl on CUDA; rendezvous by the usual env vars (MASTER_ADDR,
MASTER_PORT, WORLD_SIZE, RANK), with ``init_process_group(timeout=...)`` so a rank that never
connects ends in an error, not a hang. Deliberately absent: sampling other than greedy, EOS
stopping (exactly *new_tokens* are produced), ragged prompts inside one batch (pass equal
lengths), and tensor parallelism.
"""

from __future__ import annotations

import datetime
import os
from typing import Iterator

import torch

from ..errors import EdgeLLMError
from .stage import Stage

OP_STOP, OP_GENERATE, OP_LOGITS = 0, 1, 2


def env_rank_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun-style env vars (1 process when unset)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise EdgeLLMError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e})", "set them as torchrun does") from e
    if world < 1 or not 0 <= rank < world:
        raise EdgeLLMError(f"RANK={rank} is outside WORLD_SIZE={world}", "ranks run from 0 to WORLD_SIZE-1")
    return rank, world, local


def init_distributed(rank: int, world: int, backend: str, timeout_s: float = 60.0) -> None:
    """Join the process group (env:// rendezvous); a missing peer ends in EdgeLLMError after *timeout_s*."""
    import torch.distributed as dist

    if world == 1 or dist.is_initialized():
        return
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        raise EdgeLLMError("MASTER_ADDR and MASTER_PORT must be set for a multi-process pipeline",
                           "launch with torchrun, or set MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK on every host")
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        # the first collective proves every rank is there (gloo connects lazily on some paths)
        dist.barrier()
    except (RuntimeError, TimeoutError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeLLMError(f"rank {rank} of {world} could not connect to the other ranks at {addr}:{port} "
                           f"within {timeout_s:g} s: {first}",
                           "start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, a distinct "
                           "RANK, and an open port; raise --timeout for slow starts") from e


class PipelineEngine:
    """The pipeline protocol around one rank's ``Stage``. Rank 0 calls ``generate``/``logits``;
    the other ranks call ``serve()`` until rank 0 calls ``shutdown()``.

    >>> eng = PipelineEngine(load_stage("smollm2-135m", rank, world))   # doctest: +SKIP
    >>> eng.generate_batch(prompts, new_tokens=32, micro_batches=2)     # doctest: +SKIP (rank 0)
    """

    def __init__(self, stage: Stage):
        self.stage = stage
        self.rank, self.world = stage.rank, stage.world
        self.device = stage.device

    # -- plumbing -----------------------------------------------------------------------
    def _header(self, values=None) -> list[int]:
        import torch.distributed as dist

        t = torch.tensor(values if values is not None else [0] * 5, dtype=torch.int64, device=self.device)
        if self.world > 1:
            dist.broadcast(t, src=0)
        return [int(v) for v in t.tolist()]

    def _recv(self, shape, dtype, src: int) -> torch.Tensor:
        import torch.distributed as dist

        buf = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(buf, src=src)
        return buf

    @staticmethod
    def _split(batch: int, micro: int) -> list[int]:
        base, extra = divmod(batch, micro)
        return [base + (1 if i < extra else 0) for i in range(micro)]

    # -- rank 0: the front end ----------------------------------------------------------
    def _check_request(self, prompts: torch.Tensor, new_tokens: int, micro_batches: int) -> None:
        if self.rank != 0:
            raise EdgeLLMError("only rank 0 takes requests", "call serve() on the other ranks")
        if prompts.dim() != 2 or prompts.shape[1] < 1 or prompts.shape[0] < 1:
            raise EdgeLLMError(f"prompts must be a [batch, length] tensor of token ids, got {tuple(prompts.shape)}",
                               "pad or trim prompts to one length")
        if new_tokens < 1:
            raise EdgeLLMError("new_tokens must be at least 1", "raise --new-tokens")
        if not 1 <= micro_batches <= prompts.shape[0]:
            raise EdgeLLMError(f"micro-batches must be between 1 and the batch size {prompts.shape[0]}, got {micro_batches}",
                               "lower --micro-batches")
        max_pos = getattr(self.stage.model.config, "max_position_embeddings", None)
        if max_pos and prompts.shape[1] + new_tokens > max_pos:
            raise EdgeLLMError(f"prompt + new tokens ({prompts.shape[1] + new_tokens}) exceed the model's {max_pos} positions",
                               "use a shorter prompt or fewer new tokens")

    def stream(self, prompts: torch.Tensor, new_tokens: int, micro_batches: int = 1) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Rank 0: yield (micro-batch, step, token ids [b_m]) as the last rank returns them."""
        self._check_request(prompts, new_tokens, micro_batches)
        prompts = prompts.to(self.device)
        batch, length = prompts.shape
        self._header([OP_GENERATE, batch, length, new_tokens, micro_batches])
        yield from self._run_generate(batch, length, new_tokens, micro_batches, prompts)

    def generate_batch(self, prompts: torch.Tensor, new_tokens: int, micro_batches: int = 1) -> torch.Tensor:
        """Rank 0: greedy ids [B, new_tokens] for prompts [B, T] (all ranks take part)."""
        out = torch.empty(prompts.shape[0], new_tokens, dtype=torch.int64)
        starts = [0]
        for b in self._split(prompts.shape[0], micro_batches):
            starts.append(starts[-1] + b)
        for m, step, tok in self.stream(prompts, new_tokens, micro_batches):
            out[starts[m]:starts[m + 1], step] = tok.cpu()
        return out

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Rank 0: logits [B, T, vocab] of ids [B, T], no cache (all ranks take part)."""
        self._check_request(ids, 1, 1)
        ids = ids.to(self.device)
        self._header([OP_LOGITS, ids.shape[0], ids.shape[1], 0, 1])
        return self._run_logits(ids.shape[0], ids.shape[1], ids)

    def shutdown(self) -> None:
        """Rank 0: release the other ranks' ``serve()`` loops."""
        if self.rank == 0:
            self._header([OP_STOP, 0, 0, 0, 0])

    # -- every rank ---------------------------------------------------------------------
    def serve(self) -> int:
        """Ranks > 0: execute rank 0's requests until it shuts down; returns the number served."""
        served = 0
        while True:
            op, batch, length, new_tokens, micro = self._header()
            if op == OP_STOP:
                return served
            if op == OP_GENERATE:
                for _ in self._run_generate(batch, length, new_tokens, micro, None):
                    pass
            elif op == OP_LOGITS:
                self._run_logits(batch, length, None)
            else:
                raise EdgeLLMError(f"rank {self.rank} received unknown pipeline op {op}", "restart every rank")
            served += 1

    @torch.inference_mode()
    def _run_logits(self, batch: int, length: int, ids):
        import torch.distributed as dist

        s = self.stage
        x = ids if s.first else self._recv((batch, length, s.hidden_size), s.dtype, self.rank - 1)
        y = s.forward(x, None, logits_to_keep=0)
        if s.last and s.first:
            return y.float().cpu()
        if not s.last:
            dist.send(y.contiguous(), dst=self.rank + 1)
        elif not s.first:
            dist.send(y.float().contiguous(), dst=0)
        if s.first:
            return self._recv((batch, length, s.vocab_size), torch.float32, self.world - 1).cpu()
        return None

    @torch.inference_mode()
    def _run_generate(self, batch: int, length: int, new_tokens: int, micro: int, prompts):
        import torch.distributed as dist

        s = self.stage
        sizes = self._split(batch, micro)
        starts = [sum(sizes[:m]) for m in range(micro)]
        caches = [s.new_cache() for _ in range(micro)]
        pending: list = []                 # (work, tensor): isends in flight, tensors kept alive
        last_tok: list = [None] * micro    # rank 0 with world 1: the token of the previous step

        def token_of(logits):
            return torch.argmax(logits[:, -1, :], dim=-1)

        for step in range(new_tokens):
            for m in range(micro):
                b, t_in = sizes[m], (length if step == 0 else 1)
                if s.first:
                    if step == 0:
                        x = prompts[starts[m]:starts[m] + b]
                    elif self.world == 1:
                        x = last_tok[m].view(b, 1)
                    else:
                        tok = self._recv((b,), torch.int64, self.world - 1)
                        yield m, step - 1, tok
                        x = tok.view(b, 1)
                else:
                    x = self._recv((b, t_in, s.hidden_size), s.dtype, self.rank - 1)
                y = s.forward(x, caches[m], logits_to_keep=1)
                if s.last:
                    tok = token_of(y)
                    if self.world == 1:
                        last_tok[m] = tok
                        yield m, step, tok
                    else:
                        pending.append((dist.isend(tok.contiguous(), dst=0), tok))
                else:
                    y = y.contiguous()
                    pending.append((dist.isend(y, dst=self.rank + 1), y))
            if len(pending) > 4 * micro:        # bound the tensors kept alive for in-flight sends
                for work, _ in pending[:-2 * micro]:
                    work.wait()
                del pending[:-2 * micro]
        if s.first and self.world > 1:
            for m in range(micro):
                yield m, new_tokens - 1, self._recv((sizes[m],), torch.int64, self.world - 1)
        for work, _ in pending:
            work.wait()


class PipelineRuntime:
    """The Runtime interface (docs/design.md §1) on rank 0 of a running pipeline, so ``measure_speed``
    and ``evaluate_lm`` measure it exactly like a single-process runtime.

    >>> rt = PipelineRuntime(engine, meta, weight_bytes=total)    # doctest: +SKIP
    >>> list(rt.generate(torch.tensor([1, 2, 3]), 4))             # doctest: +SKIP
    """

    name = "torch-pipeline"

    def __init__(self, engine: PipelineEngine, total_weight_bytes: int, file_bytes: int = 0, tokenizer=None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.threads = torch.get_num_threads()
        self.device = str(engine.device)
        self.max_positions = getattr(engine.stage.model.config, "max_position_embeddings", None)
        self.vocab_size = engine.stage.vocab_size
        self._weight_bytes, self._file_bytes = total_weight_bytes, file_bytes

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.engine.logits(ids.view(1, -1))[0]

    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop_ids=(), logits_processor=None) -> Iterator[int]:
        if temperature > 0 or logits_processor is not None or stop_ids:
            raise EdgeLLMError("the pipeline decodes greedily, without stop ids or logits processors",
                               "use temperature 0 and no stop ids (exactly max_new_tokens are produced)")
        it = self.engine.stream(ids.view(1, -1), max_new_tokens, 1)
        try:
            for _, _, tok in it:
                yield int(tok[0])
        finally:
            for _ in it:           # a caller that stops early must not leave the other ranks mid-step
                pass

    def weight_bytes(self) -> int:
        """Bytes read per decoded token, over all ranks (the input embedding: one row)."""
        return self._weight_bytes

    def file_bytes(self) -> int:
        return self._file_bytes
