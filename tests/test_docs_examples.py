"""The documentation's examples: every plug-in of docs/extending.md runs in a tiny job through the harness
(actors/testing.py), and the harness's own five-line example runs as written."""

import os
import re
import sys
import textwrap

import pytest
import yaml

from tests.conftest import REPO

ray = pytest.importorskip("ray")
EXTENDING = os.path.join(REPO, "docs", "extending.md")


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


def overrides(mapping: dict, prefix: str = "") -> list[str]:
    """A YAML block as `a.b=value` overrides (lists and mappings under a key as YAML flow)."""
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict) and key not in ("options",):
            out += overrides(value, f"{prefix}{key}.")
        else:
            flow = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            out.append(f"{prefix}{key}={flow.removesuffix('...').strip()}")
    return out


def examples() -> dict:
    """{module: (its source, the overrides of the YAML block after it)} of every `# my_pkg/<module>.py` block."""
    found, last = {}, None
    for lang, body in blocks(open(EXTENDING).read()):
        head = re.match(r"# my_pkg/(\w+)\.py\n", body) if lang == "python" else None
        if head:
            last = head.group(1)
            found[last] = [body, []]
        elif lang == "yaml" and last is not None:
            found[last][1] = overrides(yaml.safe_load(body))
            last = None
    return found


@pytest.fixture(scope="module")
def my_pkg(tmp_path_factory):
    """docs/extending.md's modules as the package my_pkg, on this process's path and every Ray worker's."""
    root = tmp_path_factory.mktemp("user_code")
    (root / "my_pkg").mkdir()
    (root / "my_pkg" / "__init__.py").write_text("")
    for module, (source, _) in examples().items():
        (root / "my_pkg" / f"{module}.py").write_text(source)
    sys.path.insert(0, str(root))
    weights = tmp_path_factory.mktemp("weights")
    os.environ["SHARED_WEIGHTS_DIR"] = str(weights)
    ray.init(num_cpus=2, include_dashboard=False, namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                                       "SHARED_WEIGHTS_DIR": str(weights), "TOKENIZERS_PARALLELISM": "false"}})
    yield root
    ray.shutdown()
    sys.path.remove(str(root))


def test_every_plugin_of_the_page_has_its_config():
    found = examples()
    assert set(found) == {"estimators", "rewards", "generation", "envs", "transports", "placements"}
    assert all(found[m][1] for m in found if m != "transports"), "each example but the transport's has a YAML block"


@pytest.mark.slow
@pytest.mark.parametrize("module", ["estimators", "rewards", "generation", "envs", "transports", "placements"])
def test_each_example_runs_in_a_tiny_job(my_pkg, module, tmp_path):
    from actors.testing import tiny_job

    extra = examples()[module][1] or ["weight_sync.transport=my_pkg.transports:SharedDisk"]
    run = tiny_job(*extra, steps=1, output_dir=str(tmp_path / module))
    assert run.summary["steps"] == 1 and run.metrics
    if module == "transports":
        assert run.metrics[-1]["sync/bytes"] > 0 and os.listdir(os.environ["SHARED_WEIGHTS_DIR"])


@pytest.mark.slow
def test_the_harness_example_runs_as_written(my_pkg):
    body = next(b for lang, b in blocks(open(EXTENDING).read()) if lang == "python" and "tiny_job" in b)
    scope: dict = {}
    exec(textwrap.dedent(body), scope)  # noqa: S102 (the page's own example)
    scope["test_my_estimator"]()
