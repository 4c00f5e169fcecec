"""benchmarks/roofline.py: what the machine's limit counts, checked by hand on the tiny llama."""

import json
import os

import pytest

from benchmarks.roofline import ModelShape, copy_bandwidth, decode_bytes, limit_samples_per_s, matmul_rates, passes


def test_model_shape_counts_every_linear_and_nothing_else(tiny_llama):
    with open(os.path.join(tiny_llama, "config.json")) as f:
        c = json.load(f)
    d, i, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = d // c["num_attention_heads"] * c.get("num_key_value_heads", c["num_attention_heads"])
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * i  # q, o; k, v; gate, up, down
    shape = ModelShape.of(tiny_llama)
    assert shape.linear_params == L * per_layer + d * V  # the LM head multiplies; the embedding is a lookup
    assert shape.all_params > shape.linear_params and shape.layers == L and shape.kv_dim == kv
    critic = ModelShape.of(tiny_llama, value_head=True)
    assert critic.linear_params == L * per_layer + d


def test_the_passes_of_each_algorithm_and_the_limit():
    m = ModelShape(linear_params=1000, all_params=1500, layers=2, kv_dim=8)
    grpo = passes("grpo", m, None, None, prompt_tokens=10, response_tokens=20, decode_batch=4, micro_batch=2)
    assert sum(f for f, _ in grpo.values()) == (2 + 2 + 6) * 1000 * 30  # generate, reference, update
    assert "reference" not in passes("grpo", m, None, None, 10, 20, 4, 2, kl=False)
    ppo = passes("ppo", m, m, m, 10, 20, 4, 2)
    assert sum(f for f, _ in ppo.values()) == (2 + 2 + 2 + 2 + 6 + 6) * 1000 * 30
    # decoding: the weights once per step shared by 4 rows, and 2 (k, v) x 2 layers x 8 x 4 bytes per cached
    # token for the mean context of 10 + 19/2 over 20 steps
    assert decode_bytes(m, 10, 20, 4) == pytest.approx(4 * 1500 * 20 / 4 + 2 * 2 * 8 * 4 * (10 + 9.5) * 20)
    work = {"a": (100.0, 1.0), "b": (1.0, 100.0)}  # one pass bound by FLOPs, one by bytes
    assert limit_samples_per_s(work, flops_per_s=10.0, bytes_per_s=20.0) == pytest.approx(1 / (10 + 5))


def test_the_machine_measurements_are_rates():
    rates = matmul_rates(threads=1, n=256, repeats=1)
    assert "default" in rates and all(r > 0.1 for r in rates.values())
    assert copy_bandwidth(threads=1, mib=16, repeats=1) > 0.1
