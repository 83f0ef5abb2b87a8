"""Scale beyond one device (docs/design.md §6) with existing engines, nothing home-made.

* ``placement``: memory-budgeted placement with Accelerate's big-model utilities
  (``edgellm plan``, ``edgellm.load(..., max_memory=...)``);
* ``stage`` + ``pipeline``: pipeline-parallel inference over torch.distributed (gloo on CPU,
  nccl on CUDA), one contiguous slice of decoder layers per rank, balanced by bytes;
* ``launch``: N local ranks for ``edgellm bench --pipeline N``; ``python -m edgellm.parallel``
  is the per-rank entry point for torchrun (one host or several, docs/parallel.md).

Nothing is imported here, so ``import edgellm.parallel`` stays light.
"""
