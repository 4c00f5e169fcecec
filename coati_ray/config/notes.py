"""What the config loader did on the user's behalf, said in one line each (to stderr, once per process):
a renamed key read under its new name, a section set aside because the chosen algorithm does not use it."""

from __future__ import annotations

import sys

_SAID: set = set()


def note(message: str) -> None:
    if message in _SAID:
        return
    _SAID.add(message)
    print(f"note: {message}", file=sys.stderr, flush=True)
