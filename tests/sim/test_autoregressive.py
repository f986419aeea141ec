"""Autoregressive decode traces in the simulator (issue 13): a refresh interval counts tokens, tide-opt learns
its tau on the first tokens, and a batched decode step computes logits for every sequence."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)
pytest.importorskip("scipy", exc_type=ImportError)

import dataclasses

import numpy as np

from offload.cost import RooflineCostModel
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import make_policy
from offload.policies.base import AR_WINDOW
from offload.trace import KIND_DECODE
from sim.engine import mandatory_gpu_time, simulate
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


def test_a_batch_reads_one_cache_per_sequence(cost):
    """A decode step of B sequences reads B key/value caches: B times one sequence's attention bytes, the same
    FLOPs per token; a trace of B sequences costs more than one whose context merely equals it."""
    n, c = np.array([8.0]), np.array([4096.0])
    one, eight = QWEN3.attention_cost(n, c, 1), QWEN3.attention_cost(n, c, 8)
    kv = 2 * c * QWEN3.num_kv_heads * QWEN3.head_dim * QWEN3.dtype_bytes
    np.testing.assert_allclose(eight.bytes - one.bytes, 7 * kv)
    np.testing.assert_allclose(eight.flops, one.flops)
    assert cost.moe_pre(n, c, 8)[0] > cost.moe_pre(n, c, 1)[0]
    batched = synthetic_ar_trace(QWEN3, default_ar_config(QWEN3, gen_length=32, prompt_length=512, batch=8, seed=0))
    assert batched.sequences == 8
    # the same rows read as one sequence (not a valid trace: only its costs are compared)
    one_cache = dataclasses.replace(batched, header={**batched.header, "generation": {
        **batched.header["generation"], "sequences": 1}})
    r8 = simulate(batched, make_policy("cpu-route"), cost, 8)
    r1 = simulate(one_cache, make_policy("cpu-route"), cost, 8)
    assert mandatory_gpu_time(batched, cost) > mandatory_gpu_time(one_cache, cost) and r8.sim_time_s > r1.sim_time_s
