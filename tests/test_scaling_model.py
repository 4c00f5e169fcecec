"""The maker-scaling model of benchmarks/scaling_model.py: its two formulas, and its check against a
bench_pipeline result, predicting the 2- and 4-maker rates from the 1-maker run's costs."""

import pytest

from benchmarks.scaling_model import Costs, check, cluster_rate, costs_from, makers_rate

COSTS = Costs(generation=0.01, other=0.0025, training=0.02, sync_seconds=0.1, rollout=16)


def test_makers_scale_until_the_cores_are_full():
    assert makers_rate(COSTS, 1, 2) == pytest.approx(100.0)          # one thread: 1 / g
    assert makers_rate(COSTS, 2, 2) == pytest.approx(2 / 0.0125)     # cores full, driver and buffer included
    assert makers_rate(COSTS, 4, 2) == makers_rate(COSTS, 2, 2)      # oversubscribing gains nothing


def test_a_cluster_is_bound_by_the_makers_then_by_the_trainers():
    few = cluster_rate(COSTS, makers=1, cores_per_node=2, maker_nodes=1, trainer_cores=4)
    many = cluster_rate(COSTS, makers=8, cores_per_node=2, maker_nodes=8, trainer_cores=4)
    assert few["bound_by"] == "makers" and few["makers_rate"] == pytest.approx(100.0)
    assert many["bound_by"] == "trainers" and many["trainers_rate"] == pytest.approx(200.0)
    step = 16 / 200.0  # the exposed sync stretches each step
    assert many["samples_per_s"] == pytest.approx(200.0 * step / (step + 0.1))


def test_check_predicts_other_counts_from_the_one_maker_run():
    pipeline = {"cores": 2, "workload": {"rollout": 16},
                "standalone": {"training_core_seconds_per_sample": 0.02},
                "jobs": {"sync": {"timing_seconds": {"sync": 0.1}}},
                "maker_scaling": {"1": {"produced_samples_per_s": 95.0, "maker_core_seconds_per_sample": 0.01,
                                        "other_core_seconds_per_sample": 0.0025},
                                  "2": {"produced_samples_per_s": 160.0, "maker_core_seconds_per_sample": 0.011,
                                        "other_core_seconds_per_sample": 0.003}}}
    assert costs_from(pipeline) == COSTS  # only the 1-maker run's costs are inputs
    rows = check(pipeline)
    assert [r["makers"] for r in rows] == [1, 2]
    assert rows[1]["predicted"] == pytest.approx(160.0) and rows[1]["error"] == pytest.approx(0.0)
    assert rows[0]["error"] == pytest.approx(100.0 / 95.0 - 1)
    # bench_pipeline checks its result before the JSON round trip turns the maker counts into strings
    in_memory = {**pipeline, "maker_scaling": {int(k): v for k, v in pipeline["maker_scaling"].items()}}
    assert check(in_memory) == rows
