"""sim.chrome_trace: a tiny hand-built trace replayed with timeline=True, exported and checked."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

import json
from typing import Any

import numpy as np

from sim.chrome_trace import TRACK_NAMES, WAIT_TID, write_chrome_trace
from offload.cost import ConstantCostModel
from sim.engine import simulate
from offload.errors import TideError
from offload.policies import LayerDecision, LayerView, Policy, Prefetch, make_policy
from offload.results import RESOURCES, WHAT
from offload.trace import KIND_COMMIT, KIND_DENOISE
from offload.trace_check import make_trace

L, E, K, BLOCK = 2, 8, 2, 4


def tiny_trace(blocks: int = 3, steps_per_block: int = 4, seed: int = 0):
    assert BLOCK % steps_per_block == 0
    rng = np.random.default_rng(seed)
    kinds, block, sib, fwd, committed = [], [], [], [], []
    for b in range(blocks):
        for i in range(steps_per_block):
            kinds.append(KIND_DENOISE), block.append(b), sib.append(i), fwd.append(BLOCK * (b + 1))
            committed.append(BLOCK // steps_per_block)
        kinds.append(KIND_COMMIT), block.append(b), sib.append(0), fwd.append(BLOCK * (b + 1)), committed.append(0)
    S = len(kinds)
    counts = np.zeros((S, L, E), dtype=np.int64)
    for s in range(S):
        for layer in range(L):
            for _ in range(fwd[s]):  # each token picks K distinct experts, skewed towards low ids
                p = np.linspace(2.0, 1.0, E)
                counts[s, layer, rng.choice(E, size=K, replace=False, p=p / p.sum())] += 1
    header = {"version": 1,
              "model": {"name": "tiny", "config_hash": "0" * 16, "num_moe_layers": L, "num_experts": E, "top_k": K},
              "generation": {"mode": "prefix-recompute", "block_length": BLOCK, "steps": steps_per_block,
                             "threshold": None, "gen_length": BLOCK * blocks, "prompt_length": 0},
              "origin": {"kind": "synthetic", "seed": seed}}
    return make_trace(header, counts, block=block, step_in_block=sib, tokens_forwarded=fwd, context_tokens=fwd,
                      tokens_committed=committed, kind=kinds)


class PrefetchOverlap(Policy):
    """Exercises the engine's other paths: asynchronous prefetch for the next layer and CPU/GPU overlap."""

    name = "test-prefetch"

    def decide(self, view: LayerView) -> LayerDecision:
        if view.layer == L - 1:
            return LayerDecision(overlap_cpu=True)
        # swap expert 0 of the next layer for expert E-1 and back, step after step (both start as in 0..B-1)
        nxt = view.layer + 1
        self._flip = not getattr(self, "_flip", False)
        if self._flip:
            return LayerDecision(overlap_cpu=True, prefetch=(Prefetch(layer=nxt, promote=np.array([E - 1]),
                                                                      demote=np.array([0])),))
        return LayerDecision(overlap_cpu=True, prefetch=(Prefetch(layer=nxt, promote=np.array([0]),
                                                                  demote=np.array([E - 1])),))


COST = ConstantCostModel(expert_bytes=100, token_bytes=1)


def _policies() -> list[tuple[str, Any, bool]]:
    return [("tide", lambda: make_policy("tide", tau=2), False),
            ("fetch-lru", lambda: make_policy("fetch-lru"), False),
            ("cpu-route", lambda: make_policy("cpu-route"), True),
            ("prefetch-overlap", PrefetchOverlap, False),
            ("prefetch-overlap-shared", PrefetchOverlap, True)]


@pytest.mark.parametrize("name,factory,shared", _policies(), ids=[p[0] for p in _policies()])
def test_chrome_trace_is_consistent(tmp_path, name, factory, shared):
    trace = tiny_trace()
    result = simulate(trace, factory(), COST, budget=3, shared_duplex=shared, timeline=True, trace_name="tiny")
    out = write_chrome_trace(tmp_path / "run.trace.json", result, meta={"case": name, "np": np.int64(3)})
    assert out == tmp_path / "run.trace.json"
    assert [p.name for p in tmp_path.iterdir()] == ["run.trace.json"]  # no temp file left behind
    doc = json.loads(out.read_text())
    assert doc["metadata"]["meta"] == {"case": name, "np": 3}
    assert doc["metadata"]["label"] == result.label

    meta = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    threads = {e["tid"]: e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert threads == dict(enumerate(TRACK_NAMES))
    assert [threads[i] for i in range(len(RESOURCES))] == list(RESOURCES)

    events = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(events) == len(result.timeline)
    assert all(e["pid"] == 0 and e["ts"] >= 0 and e["dur"] >= 0 for e in events)
    assert all(e["name"] in WHAT and set(e["args"]) == {"step", "layer"} for e in events)
    assert {e["name"] for e in events if e["tid"] == WAIT_TID} <= {"wait"}
    assert not any(e["name"] == "wait" for e in events if e["tid"] != WAIT_TID)

    end_us = result.sim_time_s * 1e6
    for tid, res in enumerate(RESOURCES):
        ev = sorted((e for e in events if e["tid"] == tid), key=lambda e: e["ts"])
        for a, b in zip(ev, ev[1:]):  # the engine's resources are serial
            assert b["ts"] >= a["ts"] + a["dur"] - 1e-9 * max(1.0, end_us), (res, a, b)
        assert all(e["ts"] + e["dur"] <= end_us * (1 + 1e-12) for e in ev)
        busy_us = sum(e["dur"] for e in ev)
        assert busy_us / 1e6 == pytest.approx(result.busy_s[res], rel=1e-9, abs=1e-12), res
    if shared:  # one copy engine: H2D and D2H never overlap each other either
        ev = sorted((e for e in events if e["tid"] in (2, 3)), key=lambda e: e["ts"])
        for a, b in zip(ev, ev[1:]):
            assert b["ts"] >= a["ts"] + a["dur"] - 1e-9 * max(1.0, end_us)
    # the cases exercise the engine's paths: copies happen, and CPU work and stalls where the policy has them
    assert result.busy_s["h2d"] > 0
    if name != "fetch-lru":
        assert result.busy_s["cpu"] > 0 and result.busy_s["d2h"] > 0
    if name.startswith("prefetch"):
        assert any(e["tid"] == WAIT_TID for e in events)


def test_chrome_trace_needs_timeline(tmp_path):
    result = simulate(tiny_trace(blocks=1), make_policy("cpu-route"), COST, budget=3, timeline=False)
    with pytest.raises(TideError, match="timeline=True"):
        write_chrome_trace(tmp_path / "x.json", result)
    assert not any(tmp_path.iterdir())
