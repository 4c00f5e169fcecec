"""The command lines of the seeds' READMEs (../shared/seeds/*.txt), and the flags each README documents per script.

    .venv/bin/python -m tests.seed_commands > tests/data/seed_commands.txt   # refresh the copy CI reads

A command is a line of a code block that starts with `torchrun`, `python` or `colossalai run`, with the lines that
continue it (the previous one ends in a backslash, or this one starts with `--`). A documented flag is a bullet of
an argument list: Coati's `- --flag: ...` and Colossal-LLaMA's `* Description: `--flag`...`, counted for the script
of the command before it. The copy is plain text: `== <seed file>`, then `$ <command>` (shell-quoted) and
`flags <script>: --a --b` lines.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(os.path.dirname(REPO), "shared", "seeds")
COPY = os.path.join(REPO, "tests", "data", "seed_commands.txt")

COMMAND_START = re.compile(r"^\s*(torchrun|python|colossalai\s+run)\b")
COATI_ARG = re.compile(r"^- (--\w+):")               # Coati's "### Arg List"
COLOSSAL_ARG = re.compile(r"^\* [^`]*: `(--\w+)`")   # Colossal-LLaMA's "Here is details about CLI arguments"
HEADER = """\
# The command lines of the seeds' READMEs (../shared/seeds/*.txt) and the flags each documents per script,
# extracted by tests/seed_commands.py; tests/test_seed_commands.py walks them flag by flag, and checks this copy
# against the seeds where ../shared/seeds exists (CI's clone has only the repository). Refresh it with
#     .venv/bin/python -m tests.seed_commands > tests/data/seed_commands.txt
# `== <seed file>` starts a seed; `$ <command>` is one command line (continuations joined, shell-quoted);
# `flags <script>: ...` are the flags the README's argument list documents for that script.
"""


@dataclass(frozen=True)
class SeedCommand:
    seed: str
    words: tuple


@dataclass(frozen=True)
class DocumentedFlag:
    seed: str
    script: str
    flag: str


def _script(words: list[str]) -> str:
    return next(os.path.basename(w) for w in words if w.endswith(".py"))


def _continues(previous: str, line: str) -> bool:
    return line.strip() != "" and not line.strip().startswith("```") and (
        previous.rstrip().endswith("\\") or line.strip().startswith("--"))


def _joined(parts: list[str]) -> list[str]:
    return shlex.split(" ".join(p.rstrip().rstrip("\\") for p in parts))


def extract_seed(text: str) -> tuple[list[list[str]], dict]:
    """A README -> (its command lines as words, {script: [flags its argument lists document]})."""
    lines, commands, documented = text.splitlines(), [], {}
    in_code, script, i = False, None, 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            in_code = not in_code
        elif in_code and COMMAND_START.match(line):
            parts = [line]
            while i + 1 < len(lines) and _continues(parts[-1], lines[i + 1]):
                i += 1
                parts.append(lines[i])
            commands.append(_joined(parts))
            script = _script(commands[-1])
        elif not in_code and script and (COATI_ARG.match(line) or COLOSSAL_ARG.match(line)):
            flag = (COATI_ARG.match(line) or COLOSSAL_ARG.match(line)).group(1)
            if flag not in documented.setdefault(script, []):
                documented[script].append(flag)
        i += 1
    return commands, documented


def extract(seed_dir: str = SEEDS) -> str:
    """Every seed file of `seed_dir`, as the copy's text."""
    out = [HEADER]
    for name in sorted(f for f in os.listdir(seed_dir) if f.endswith(".txt")):
        with open(os.path.join(seed_dir, name), encoding="utf-8") as f:
            commands, documented = extract_seed(f.read())
        out.append(f"== {name}\n")
        out += [f"$ {shlex.join(words)}\n" for words in commands]
        out += [f"flags {script}: {' '.join(flags)}\n" for script, flags in documented.items()]
    return "".join(out)


def read_copy(path: str = COPY) -> tuple[list[SeedCommand], list[DocumentedFlag]]:
    commands, flags, seed = [], [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("== "):
                seed = line[3:]
            elif line.startswith("$ "):
                commands.append(SeedCommand(seed, tuple(shlex.split(line[2:]))))
            elif line.startswith("flags "):
                script, _, names = line[len("flags "):].partition(": ")
                flags += [DocumentedFlag(seed, script, name) for name in names.split()]
    return commands, flags


if __name__ == "__main__":
    sys.stdout.write(extract(sys.argv[1] if len(sys.argv) > 1 else SEEDS))
