"""Errors the orchestrator raises for bad user input (study files, overrides, CLI arguments)."""
from __future__ import annotations

from typing import Iterable

MAX_LISTED_ERRORS = 20


class StudyError(ValueError):
    """A study file (or an override of one) is invalid.

    ``errors`` is a list of ``(path, problem)`` pairs, where ``path`` is the dotted path of the
    offending value (``"sweeps[1].kd.top_p"``) or a file name, and ``problem`` is one short
    sentence fragment (``"must be in (0, 1] (got 1.5)"``). ``str(err)`` is ``"path: problem"``
    for one error and one such line per error for several, never a traceback or library text.
    """

    def __init__(self, errors: str | Iterable[tuple[str, str]], *, source: str | None = None):
        if isinstance(errors, str):
            errors = [("", errors)]
        unique: list[tuple[str, str]] = []
        for item in errors:
            if item not in unique:
                unique.append(item)
        self.errors = unique
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [f"{path}: {problem}" if path else problem for path, problem in self.errors]
        if len(lines) == 1:
            return lines[0]
        shown = lines[:MAX_LISTED_ERRORS]
        if len(lines) > len(shown):
            shown.append(f"... and {len(lines) - len(shown)} more")
        where = f" in {self.source}" if self.source else ""
        return f"{len(lines)} errors{where}:\n" + "\n".join("  " + line for line in shown)
