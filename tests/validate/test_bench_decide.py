"""validate.bench_decide: the policies' decide() medians for the executor profile's ``decide_us`` (numpy only)."""
from __future__ import annotations

import time

import numpy as np

from offload.cost import RooflineCostModel
from offload.executor import ExecutorProfile
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import RUNNABLE
from validate.bench_decide import BLOCKS, STEPS_PER_BLOCK, decide_table, routing


def test_routing_is_top_k_per_token_and_deterministic():
    counts, steps = routing(3, 32, 4, seed=1)
    assert counts.shape == (BLOCKS * STEPS_PER_BLOCK, 3, 32) and len(steps) == counts.shape[0]
    per_token = counts.sum(axis=-1) / 4  # every token picks top_k experts at every layer
    np.testing.assert_array_equal(per_token, np.array([[s.tokens_forwarded] * 3 for s in steps]))
    assert [s.step_in_block for s in steps[:3]] == [0, 1, 2] and steps[-1].block == BLOCKS - 1
    np.testing.assert_array_equal(routing(3, 32, 4, seed=1)[0], counts)


def test_decide_table_on_the_tiny_preset():
    spec = ModelSpec.load("llada2-tiny")
    cost = RooflineCostModel(spec, HardwareProfile.load("h100-pcie5"))
    t0 = time.perf_counter()
    table = decide_table(spec, cost)
    assert time.perf_counter() - t0 < 10
    assert set(table) == set(RUNNABLE) - {"all-gpu"}
    assert all(v > 0 for v in table.values()), table
    assert table["riptide"] > table["cpu-route"]  # riptide's decision is numpy over E, cpu-route's a constant
    # it is a valid executor table (validate.profile_build.build_executor puts it in tide-moe)
    assert ExecutorProfile.from_dict({"name": "t", "decide_us": table}).decide_us == table
