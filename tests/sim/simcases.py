"""Small hand-built traces for engine and policy tests."""
from __future__ import annotations

import numpy as np

from offload.policies import KEEP, LayerDecision, Policy, Prefetch
from offload.results import Counters, SimRecord
from offload.trace import KIND_DENOISE
from offload.trace_check import make_trace


def tiny_trace(counts, *, block=None, step_in_block=None, kind=None, committed=None, mode="prefix-recompute",
               block_length=2, top_k=1):
    """A trace from a [S, L, E] counts list; tokens_forwarded = assignments / top_k."""
    counts = np.asarray(counts, dtype=np.int32)
    S, L, E = counts.shape
    tf = counts[:, 0, :].sum(axis=1) // top_k
    header = {"version": 1,
              "model": {"name": "tiny", "config_hash": "0" * 16, "num_moe_layers": L, "num_experts": E, "top_k": top_k},
              "generation": {"mode": mode, "block_length": block_length, "gen_length": int(S * 8), "steps": 2,
                             "threshold": 0.95, "prompt_length": 0},
              "origin": {"kind": "synthetic", "seed": None}}
    return make_trace(header, counts,
                      block=np.zeros(S) if block is None else block,
                      step_in_block=np.arange(S) if step_in_block is None else step_in_block,
                      tokens_forwarded=tf, context_tokens=tf,
                      tokens_committed=np.ones(S) if committed is None else committed,
                      kind=np.full(S, KIND_DENOISE) if kind is None else kind)


def sim_row(trace: str, policy: str, tps: float, tau: int | None = None, budget: int = 64, hit: float = 0.5,
            mode: str | None = None, **tags) -> SimRecord:
    """A hand-made row (SimRecord) of 1000 generated tokens at ``tps`` tokens/s and hit ratio ``hit``."""
    sim_time = 1000.0 / tps
    gpu = round(1000 * hit)
    return SimRecord(
        policy=policy, params={} if tau is None else {"tau": tau}, trace=trace, mode=mode or trace, tau=tau,
        budget=budget, causal=True, policy_report={}, generated_tokens=1000, sim_time_s=sim_time,
        counters=Counters(h2d_bytes=3_000_000_000, d2h_bytes=1_000_000_000, h2d_weight_bytes=2_000_000_000,
                          promotions=120, demotions=100, cpu_assignments=1000 - gpu, gpu_assignments=gpu),
        busy_s={"gpu": 0.6 * sim_time, "cpu": 0.3 * sim_time, "h2d": 0.2 * sim_time, "d2h": 0.1 * sim_time},
        step_time_mean_s=0.01, step_time_p50_s=0.01, steps=100, events=5000,
        wall_s=0.2, tags=tags)


class SwapAndOverlap(Policy):
    """Step 0: demote expert 1, promote expert 2, run expert 1 on the CPU overlapped, and prefetch expert 1
    back in place of expert 0; later steps keep everything. With SWAP below (one MoE layer, experts 0 and 1
    resident at budget 2, expert 1 carrying 5 tokens) it exercises every resource of one layer at once."""

    name = "swap-and-overlap-test"

    def decide(self, view):
        if view.step.index:
            return KEEP
        return LayerDecision(demote=np.array([1]), promote=np.array([2]), overlap_cpu=True,
                             prefetch=(Prefetch(layer=0, promote=np.array([1]), demote=np.array([0])),))


SWAP = [[[1, 5, 1]]]
