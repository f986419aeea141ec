"""One trace through both executors: the expert store generates with a random-weight llada2-tiny on the CPU and
records its trace, the engine replays that trace under the same policy, budget, cost model and executor, and
every (step, MoE layer) step of the two agrees field by field: the decision (prefetches included), the plan and
the staging chunks (``offload.step``), and then the counters."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np
import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # the engine's side; absent on the GPU machine

import test_expert_store as cases  # the store's test policies and cost model (same directory)
from offload.executor import ExecutorProfile
from offload.policies import make_policy
from runtime.diffusion import GenerationSettings, generate
from runtime.expert_store import ExpertStore
from runtime.session import Session, random_prompt
from sim.engine import simulate

BUDGET = 8  # of llada2-tiny's 32 experts per layer
EXECUTOR = ExecutorProfile.load("tide-moe")  # 8 staging slots: chunks of 4
POLICIES = {
    "riptide": lambda: make_policy("riptide"),
    "fetch-lru": lambda: make_policy("fetch-lru"),
    "prefetch-stream": cases.PrefetchStreamPolicy,
    "rebudget": cases.RebudgetPolicy,
}
MOVES = {"promote", "demote", "stream", "prefetch"}
COVERS = {"riptide": MOVES, "prefetch-stream": MOVES, "fetch-lru": {"stream", "chunks"}, "rebudget": {"budget"}}


@pytest.fixture(scope="module")
def session() -> Session:
    a = argparse.Namespace(
        threads=None,
        device="cpu",
        dtype=None,
        model="llada2-tiny",
        num_layers=None,
        seed=0,
        strict=False,
        trust_remote_code=False,
    )
    return Session.from_args(a)


def store_run(session: Session, policy: Any, mode: str) -> tuple[list, Any, Any]:
    """The store's steps, the trace it recorded and its counters, for one generation."""
    settings = GenerationSettings(gen_length=24, block_length=8, steps=4, mode=mode, stop_at_eos=False)
    steps: list = []
    store = ExpertStore(
        session.cfg.spec,
        session.host,
        policy,
        BUDGET,
        session.device,
        session.dtype,
        cost=cases.RIPTIDE_COST,
        executor=EXECUTOR,
        block_length=settings.block_length,
        mode=mode,
        plans=steps,
    )
    session.model.set_experts(store)
    result = generate(session.model, store, session.cfg, random_prompt(session.cfg, 12, 0, session.device), settings)
    return steps, result.trace, store.counters()


def assert_same(a: Any, b: Any, where: str) -> None:
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


@pytest.mark.parametrize("mode", ["prefix-recompute", "block-cache"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_engine_and_store_step_alike(session, name, mode):
    ran, trace, counters = store_run(session, POLICIES[name](), mode)
    replayed: list = []
    sim = simulate(trace, POLICIES[name](), cases.RIPTIDE_COST, BUDGET, executor=EXECUTOR, plans=replayed)
    assert len(ran) == len(replayed) == trace.num_steps * trace.num_moe_layers
    for (s, layer, a), (s2, layer2, b) in zip(ran, replayed):
        assert (s, layer) == (s2, layer2)
        assert_same(a, b, f"step {s} layer {layer}")
    assert counters == sim.counters
    assert COVERS[name] <= moves(ran)  # the comparison saw these kinds of move


def moves(ran: list) -> set[str]:
    """The kinds of move a run's steps made."""
    steps = [st for *_, st in ran]
    out = {k for k in ("promote", "demote", "stream") if any(getattr(st.plan, k).size for st in steps)}
    return out | {
        k
        for k, ok in (
            ("prefetch", any(st.decision.prefetch for st in steps)),
            ("budget", any(st.decision.budget is not None for st in steps)),
            ("chunks", any(len(st.chunks) > 1 for st in steps)),
        )
        if ok
    }
