"""Every command block of the README and the documentation is checked: each `python -m launch.X` names a
module that exists, its `--config` files exist, every `key=value` override is a real key of that launcher's config
(under today's name, not a renamed one), every `make` target exists, and every config file the pages name exists."""

import glob
import os
import re
import shlex

import pytest

from tests.conftest import REPO

PAGES = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
KEY = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z0-9_]+)+=")


def config_class(launcher: str):
    from coati_ray.config import RMConfig, SFTConfig
    from coati_ray.config.generate import GenerateConfig
    from coati_ray.config.pipeline import PipelineConfig
    from coati_ray.config.pretrain import PretrainConfig
    from coati_ray.config.rl import RLConfig
    from coati_ray.config.serve import ServeConfig

    return {"sft": SFTConfig, "rm": RMConfig, "ppo": RLConfig, "pipeline": PipelineConfig,
            "pretrain": PretrainConfig, "generate": GenerateConfig, "serve": ServeConfig}.get(launcher)


def commands() -> list[tuple[str, str]]:
    """(page, command line) of every shell block, continuation lines joined."""
    out = []
    for page in PAGES:
        text = open(page, encoding="utf-8").read()
        for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().lstrip("$ ").strip()
                if line and not line.startswith("#"):
                    out.append((os.path.relpath(page, REPO), line))
    return out


def make_targets() -> set:
    with open(os.path.join(REPO, "Makefile")) as f:
        return set(re.findall(r"^([a-z][\w-]*):", f.read(), re.M))


def check_command(line: str) -> list[str]:
    """What is wrong with one command line (empty: nothing)."""
    from coati_ray.config.loader import _check_known, renamed_path

    problems = []
    code = line.split(" # ")[0]
    for target in re.findall(r"(?:^|[;&|]\s*)make\s+([a-z][\w-]*)", code):
        if target not in make_targets():
            problems.append(f"make {target}: no such target")
    found = re.search(r"-m (launch\.\w+)(.*)", code)
    if not found:
        return problems
    module, rest = found.group(1), found.group(2)
    launcher = module.split(".")[1]
    if not os.path.isfile(os.path.join(REPO, "launch", f"{launcher}.py")):
        return problems + [f"{module}: no such module"]
    try:
        words = shlex.split(rest)
    except ValueError:
        words = rest.split()
    cls = config_class(launcher)
    for i, word in enumerate(words):
        if word == "--config" and i + 1 < len(words) and "$" not in words[i + 1]:
            if not os.path.isfile(os.path.join(REPO, words[i + 1])):
                problems.append(f"--config {words[i + 1]}: no such file")
        if cls is not None and KEY.match(word) and not words[i - 1:i] == ["--prompt"]:
            parts = word.split("=", 1)[0].split(".")
            today = renamed_path(cls, parts)
            if today != parts:
                problems.append(f"{word.split('=')[0]}: an old spelling (docs use today's names)")
            try:
                _check_known(cls, today)
            except Exception as e:  # a ConfigError naming the key
                problems.append(f"{word.split('=')[0]}: {e}")
    return problems


@pytest.mark.parametrize("page, line", commands())
def test_every_command_of_the_docs_names_real_things(page, line):
    assert not check_command(line), f"{page}: {line}"


def test_every_config_file_the_pages_name_exists():
    missing = []
    for page in PAGES:
        for path in re.findall(r"\b(configs/[\w./-]+\.ya?ml)\b", open(page, encoding="utf-8").read()):
            if not os.path.isfile(os.path.join(REPO, path)):
                missing.append((os.path.relpath(page, REPO), path))
    assert not missing


def test_the_checks_catch_what_they_are_for():
    assert check_command("python -m launch.ppo --config configs/ppo_tiny.yaml algorithm.kl_coef=0.1") == []
    assert any("old spelling" in p for p in check_command("python -m launch.ppo ppo.kl_coef=0.1"))
    assert any("unknown key" in p for p in check_command("python -m launch.sft trainer.max_step=3"))
    assert any("no such file" in p for p in check_command("python -m launch.sft --config configs/nope.yaml"))
    assert any("no such module" in p for p in check_command("python -m launch.nope"))
    assert any("no such target" in p for p in check_command("make nope"))
