"""Autoregressive decode traces in the simulator (issue 13): a refresh interval counts tokens, tide-opt learns
its tau on the first tokens, and a batched decode step computes logits for every sequence."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)
pytest.importorskip("scipy", exc_type=ImportError)

import numpy as np

from offload.cost import RooflineCostModel
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import make_policy
from offload.policies.base import AR_WINDOW
from offload.trace import KIND_DECODE
from sim.engine import simulate
from traces.synthetic_ar import default_ar_config, synthetic_ar_trace

QWEN3 = ModelSpec.load("qwen3-30b-a3b")


@pytest.fixture(scope="module")
def ar_trace():
    return synthetic_ar_trace(QWEN3, default_ar_config(QWEN3, gen_length=96, seed=0))


@pytest.fixture(scope="module")
def cost():
    return RooflineCostModel(QWEN3, HardwareProfile.load("h100-pcie5"))


def test_tide_refreshes_every_tau_tokens(ar_trace, cost):
    """Each decode row is its own block (step_in_block 0): tau must count tokens, not steps within a block."""
    promotions = [simulate(ar_trace, make_policy("tide", tau=t), cost, 8).counters.promotions for t in (1, 4, 16)]
    assert promotions[0] > promotions[1] > promotions[2] > 0


def test_tide_opt_learns_on_the_first_tokens(ar_trace, cost):
    r = simulate(ar_trace, make_policy("tide-opt"), cost, 8)
    chosen = r.policy_report["chosen_tau"]
    assert isinstance(chosen, int) and 1 <= chosen <= AR_WINDOW
    assert r.sim_time_s > 0 and r.counters.gpu_assignments + r.counters.cpu_assignments == int(ar_trace.counts.sum())


def test_batched_decode_computes_logits_for_every_sequence():
    batched = synthetic_ar_trace(QWEN3, default_ar_config(QWEN3, gen_length=8, batch=4, seed=1))
    decode = batched.kind == KIND_DECODE
    assert np.array_equal(batched.lm_tokens[decode], batched.tokens_forwarded[decode]) and batched.lm_tokens[decode].min() == 4
