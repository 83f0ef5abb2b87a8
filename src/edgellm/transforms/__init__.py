"""Function-preserving transforms of a float model's weights: ``rotate`` (norm-gain folding and a random
Hadamard rotation of the residual stream, the offline part of QuaRot/SpinQuant).

``hadamard.py`` holds the matrices as plain tensor functions; ``rotate.py`` applies them to a model
through the family registry. A transform returns a new float32 model that computes the same logits;
it quantizes nothing (that is ``edgellm.quantization``). ``scalefold.py`` is the one in-place piece:
folding a per-channel scale through a producer (norm or linear) and its consumer linears, the step
AWQ and the GGUF exporter's prescale share.
"""

from __future__ import annotations

from .rotate import RotateConfig, RotateResult, rotate

__all__ = ["rotate", "RotateConfig", "RotateResult"]
