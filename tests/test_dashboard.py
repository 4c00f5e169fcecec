"""Watching a run: the Grafana dashboard names only series we emit, covers every metric group, and the
embedded Ray starts its dashboard on 127.0.0.1, on the next free port when the first is taken."""

import json
import os
import re
import socket

import pytest

from tests.conftest import REPO

DASHBOARD = os.path.join(REPO, "configs", "grafana", "coati_rlhf.json")
GROUPS = {"throughput", "buffer", "staleness", "reward", "loss", "sync", "stages", "tflops", "episodes"}
ROLES = {"maker", "actor_trainer", "critic_trainer", "replay_buffer", "driver"}


def test_dashboard_json_is_what_the_script_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("grafana_dashboard", os.path.join(REPO, "scripts",
                                                                                    "grafana_dashboard.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(DASHBOARD) as f:
        assert f.read() == module.render(), "run python scripts/grafana_dashboard.py"


def test_every_panel_queries_series_that_actors_emit():
    """A renamed metric breaks this test, not a panel nobody looks at until a run goes wrong."""
    from actors.metrics import SERIES

    with open(DASHBOARD) as f:
        board = json.load(f)
    groups = set()
    for panel in board["panels"]:
        groups.add(panel["description"].split("group: ")[1])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = re.findall(r"ray_coati_([a-z_]+)", target["expr"])
            assert names, target["expr"]
            for name in names:
                assert name in SERIES, (name, panel["title"])
            for role in re.findall(r'role="([a-z_]+)"', target["expr"]):
                assert role in ROLES, (role, panel["title"])
    assert groups == GROUPS


def test_embedded_ray_starts_its_dashboard_on_the_next_free_port():
    ray = pytest.importorskip("ray")
    from actors.cluster import connect, free_port

    if ray.is_initialized():
        pytest.skip("another test module left Ray running")
    first = free_port(18265)
    lines = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        try:
            assert connect(num_cpus=1, dashboard=True, dashboard_port=first, info=lines.append)
            url = ray.get_runtime_context().gcs_address and lines[0]
        finally:
            ray.shutdown()
    assert len(lines) == 1 and lines[0].startswith("Ray dashboard: http://127.0.0.1:"), lines
    port = int(re.search(r"127\.0\.0\.1:(\d+)", url).group(1))
    assert port > first  # the first port was taken: the next free one
