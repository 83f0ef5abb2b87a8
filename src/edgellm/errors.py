"""The one exception type the CLI turns into a clean one-line message.

`EdgeLLMError(message, hint)`: *message* names the problem, *hint* names the fix.
The CLI prints ``error: <message> (<hint>)`` and exits with code 2; ``--debug``
shows the traceback instead. Library callers can catch it like any exception.
"""

from __future__ import annotations

import difflib


class EdgeLLMError(Exception):
    """A user-facing error: what went wrong, and how to fix it.

    >>> str(EdgeLLMError("no such file: x.txt", "check the path"))
    'no such file: x.txt (check the path)'
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def closest(name: str, choices) -> str | None:
    """The closest of *choices* to *name*, or None when nothing is close.

    >>> closest("smollm2-135", ["smollm2-135m", "minilm-l6"])
    'smollm2-135m'
    """
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.4)
    return found[0] if found else None


def unknown_name_error(kind: str, name: str, choices) -> EdgeLLMError:
    """An error for an unknown name that suggests the closest known one."""
    choices = sorted(choices)
    best = closest(name, choices)
    hint = f"did you mean '{best}'? known: {', '.join(choices)}" if best else f"known: {', '.join(choices)}"
    return EdgeLLMError(f"unknown {kind} '{name}'", hint)
