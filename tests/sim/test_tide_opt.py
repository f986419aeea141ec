"""tide-opt: the tau solver on cases whose optimum is known by hand, end to end in the engine with the constant
cost model, without a cost model, and without scipy.

ConstantCostModel: step 1 s, MoE pre-expert work 1 s per layer, 0.1 s per active GPU expert, 1 s per active CPU
expert, copies 0.01 s per byte; an expert is 100 bytes, a token's activation 1 byte.
"""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from simcases import tiny_trace
from offload.cost import ConstantCostModel
from sim.engine import simulate
from offload.policies import POLICIES, TAU_POLICIES, make_policy
from offload.step import RunShape, Stepper, trace_steps
from offload.policies.tide_opt import TideOpt, block_objective, solve_tau

BLOCK_LENGTH = 8


def rotating_trace(n: int = 4, blocks: int = 3, drift: bool = True):
    """One MoE layer, 8 experts, top-1, 2 tokens per step, blocks of n denoising steps. With drift, in-block
    step j uses experts 2j mod 8 and 2j+1 mod 8 (a frozen placement misses everything a step later);
    without, every step uses experts 0 and 1."""
    rows, block, sib = [], [], []
    for b in range(blocks):
        for j in range(n):
            c = np.zeros(8, dtype=np.int32)
            c[[(2 * j) % 8, (2 * j + 1) % 8] if drift else [0, 1]] = 1
            rows.append([c])
            block.append(b)
            sib.append(j)
    return tiny_trace(rows, block=block, step_in_block=sib, block_length=BLOCK_LENGTH)


def run(cost, trace=None, **kw):
    policy = TideOpt(**kw)
    result = simulate(trace if trace is not None else rotating_trace(), policy, cost, 2)
    return policy, result


def test_registered_and_not_a_tau_policy():
    assert POLICIES["tide-opt"] is TideOpt and "tide-opt" not in TAU_POLICIES
    assert make_policy("tide-opt").params() == {}
    assert make_policy("tide-opt", per_layer=True).params() == {"per_layer": True}
    assert make_policy("tide-opt").report() == {}  # nothing chosen before the first block ends


def test_solver_finds_the_eoq_optimum():
    # staleness costs 1 s per step since refresh, a refresh 8 s: the square-root law gives tau = sqrt(2 * 8 / 1)
    # = 4, and with n = 32 (a multiple of 4) the exact J agrees: J(3) = 111, J(4) = 104, J(5) = 109
    n = 32
    step, refresh = np.arange(n, dtype=float), np.full(n, 8.0)
    refresh[0] = 0.0
    assert [block_objective(step, refresh, n, t) for t in (3, 4, 5)] == [111.0, 104.0, 109.0]
    assert solve_tau(step, refresh) == (4, "scipy")
    assert solve_tau(step, refresh, use_scipy=False) == (4, "grid")


def test_solver_edges():
    n = 10
    flat = np.ones(n)
    assert solve_tau(flat, np.zeros(n))[0] == n                   # nothing to gain: the largest tau
    assert solve_tau(flat, np.zeros(n), use_scipy=False)[0] == n
    rising = np.arange(n, dtype=float)
    assert solve_tau(rising, np.zeros(n))[0] == 1                 # free refreshes: refresh every step
    assert solve_tau(np.ones(1), np.zeros(1)) == (1, "trivial")


def test_expensive_transfers_never_refresh_in_block():
    # block 0 measures: fresh placement 0.2 s/step, stale 2.04 s/step (two CPU experts and their copies),
    # refresh 2 s (two 100-byte experts). J(1) = 6.8, J(2) = J(3) = 6.48, J(4) = 6.32: no in-block refresh,
    # reported as the block length
    policy, result = run(ConstantCostModel())
    assert policy.chosen_tau == BLOCK_LENGTH and policy.tau == BLOCK_LENGTH
    rep = policy.report()
    assert rep["observed_steps"] == 4 and rep["solver"] == "scipy" and rep["cost_model"] == "ctx.cost"
    assert rep["predicted_block_s"] == pytest.approx(6.32)
    tide = simulate(rotating_trace(), make_policy("tide", tau=BLOCK_LENGTH), ConstantCostModel(), 2)
    assert result.sim_time_s == pytest.approx(tide.sim_time_s)


def test_cheap_transfers_refresh_every_step():
    # refresh 0.02 s: J(1) = 4 x 0.2 + 3 x 0.02 = 0.86 beats any stale step (2.04 s)
    policy, result = run(ConstantCostModel(h2d_per_byte_s=1e-4))
    assert policy.chosen_tau == 1
    assert result.counters.cpu_assignments == 0


def test_zero_drift_takes_the_largest_tau():
    policy, _ = run(ConstantCostModel(h2d_per_byte_s=1e-6), trace=rotating_trace(drift=False))
    assert policy.chosen_tau == BLOCK_LENGTH


def test_per_layer_gives_one_tau_per_layer():
    policy, _ = run(ConstantCostModel(h2d_per_byte_s=1e-4), per_layer=True)
    assert policy.chosen_tau == [1]


def drive(policy, trace, budget, cost):
    """Run a policy as the runtime does (no engine): the stepper without copies, ctx.trace None."""
    shape = RunShape(trace.num_moe_layers, trace.num_experts, trace.top_k, 100, 1, BLOCK_LENGTH, trace.mode)
    Stepper(policy, budget, shape, cost=cost).run(trace.counts, trace_steps(trace))
    return policy


def test_without_a_cost_model_uses_the_byte_proxy():
    # proxy: a CPU expert costs a quarter of a copy, so two stale misses per step (0.5 copy) against a two-
    # expert refresh (2 copies): J(4) = 1.5 beats J(1) = 6 (in copy units)
    policy = drive(TideOpt(), rotating_trace(), 2, None)
    assert policy.report()["cost_model"] == "byte-proxy" and policy.chosen_tau == BLOCK_LENGTH


def test_importable_and_solves_without_scipy(import_blocker):
    code = import_blocker(["scipy"]) + textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests/sim")
        from offload.cost import ConstantCostModel
        from offload.policies import make_policy
        from test_tide_opt import drive, rotating_trace
        p = drive(make_policy("tide-opt"), rotating_trace(), 2, ConstantCostModel(h2d_per_byte_s=1e-4))
        assert "scipy" not in sys.modules or sys.modules["scipy"] is None, "scipy was imported"
        print(p.report()["solver"], p.chosen_tau)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["grid", "1"]
