"""Build a student from its teacher by keeping a subset of the teacher's blocks.

This module only *chooses* which blocks to keep (evenly spaced, first and last always kept);
the removal itself is ``edgellm.pruning.structured.remove_layers``, the one layer dropper in the
tree. The teacher is deep-copied first: an input model is never modified. ``task_of`` and
``check_compatible`` say whether a teacher and a student can be paired. Deliberately
absent: width reduction and head pruning (the pruning issue owns those).
"""

from __future__ import annotations

import copy

from ..calibrate import find_blocks
from ..errors import EdgeLLMError
from ..models import Loaded, count_params, load, model_bytes
from ..pruning.structured import remove_layers


def keep_evenly(n_layers: int, keep: int) -> list[int]:
    """*keep* block indices out of *n_layers*, evenly spaced, always including the first and the last.

    >>> keep_evenly(30, 15)
    [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]
    >>> keep_evenly(6, 3)
    [0, 3, 5]
    """
    if not 1 <= keep <= n_layers:
        raise EdgeLLMError(f"cannot keep {keep} of {n_layers} layers", f"use --keep-layers between 1 and {n_layers}")
    if keep == 1:
        return [n_layers - 1]
    step = (n_layers - 1) / (keep - 1)
    return sorted({int(i * step + 0.5) for i in range(keep)})


def layers_to_keep(n_layers: int, keep_layers: int | None = None, prune_ratio: float | None = None) -> int:
    """How many blocks to keep, from ``--keep-layers`` or ``--prune-ratio`` (exactly one of them)."""
    if (keep_layers is None) == (prune_ratio is None):
        raise EdgeLLMError("give exactly one of keep_layers and prune_ratio", "e.g. --keep-layers 15 or --prune-ratio 0.5")
    if prune_ratio is not None:
        if not 0 <= prune_ratio < 1:
            raise EdgeLLMError(f"prune_ratio must lie in [0, 1) (got {prune_ratio})", "e.g. --prune-ratio 0.5")
        return max(1, round(n_layers * (1 - prune_ratio)))
    return int(keep_layers)


def student_from_teacher(teacher, keep_layers: int | None = None, prune_ratio: float | None = None,
                         layers: list[int] | None = None, **load_kwargs) -> Loaded:
    """A new ``Loaded`` whose model is a copy of *teacher* with only some blocks kept.

    *teacher* is a spec or a ``Loaded``; *layers* (explicit indices to keep) overrides the
    evenly spaced choice. The kept indices are recorded in ``meta.edgellm["kept_layers"]``.

    >>> s = student_from_teacher("smollm2-135m", keep_layers=15)     # doctest: +SKIP
    >>> s.model.config.num_hidden_layers                               # doctest: +SKIP
    15
    """
    src = teacher if isinstance(teacher, Loaded) else load(teacher, **load_kwargs)
    model = copy.deepcopy(src.model)
    _, blocks = find_blocks(model)
    n = len(blocks)
    if layers is None:
        keep = keep_evenly(n, layers_to_keep(n, keep_layers, prune_ratio))
    else:
        keep = sorted(set(int(i) for i in layers))
        if not keep or keep[0] < 0 or keep[-1] >= n:
            raise EdgeLLMError(f"layers {layers} out of range for a {n}-layer model", f"use indices 0..{n - 1}")
    remove_layers(model, [i for i in range(n) if i not in keep])
    meta = copy.copy(src.meta)
    meta.name = f"{src.meta.name}[{len(keep)} of {n} layers]"
    meta.n_params = count_params(model)
    meta.param_bytes = model_bytes(model)
    meta.edgellm = {**src.meta.edgellm, "kept_layers": keep, "teacher_layers": n}
    return Loaded(model, src.tokenizer, meta)


def task_of(model) -> str:
    """``causal-lm`` or ``classification``: the kinds of model distillation trains."""
    name = type(model).__name__
    if "ForCausalLM" in name:
        return "causal-lm"
    if "ForSequenceClassification" in name:
        return "classification"
    raise EdgeLLMError(f"cannot distill a {name}", "use a causal LM or a sequence classifier (--task classification)")


def check_compatible(teacher: Loaded, student: Loaded, task: str) -> None:
    """Teacher and student must predict over the same vocabulary / labels with the same tokenizer."""
    tc, sc = teacher.model.config, student.model.config
    if task == "causal-lm" and tc.vocab_size != sc.vocab_size:
        raise EdgeLLMError(f"vocabulary mismatch: the teacher predicts {tc.vocab_size} tokens, the student {sc.vocab_size}",
                           "token-level KD needs the same tokenizer: build the student from the teacher (--student-from)")
    if task == "classification" and tc.num_labels != sc.num_labels:
        raise EdgeLLMError(f"label mismatch: the teacher has {tc.num_labels} labels, the student {sc.num_labels}",
                           "give both the same number of labels")
    tt, st = teacher.tokenizer, student.tokenizer
    if tt is not None and st is not None and tt is not st and tt.get_vocab() != st.get_vocab():
        raise EdgeLLMError("tokenizer mismatch: the teacher's and the student's tokenizers map text to different ids",
                           "distil into a student that uses the teacher's tokenizer")
