"""``decide_us``: each policy's decide() time on this host, per (step, MoE layer) call (numpy only).

Every causal policy but all-gpu (whose KEEP is inside the ``moe_overhead`` table, validate.bench_store) is stepped
as the engine and the store step it (``offload.step.Stepper.run``: the same views, residency and prefetches, no
copies) over a routing array generated here with numpy alone (traces.synthetic needs scipy, which the GPU
machine lacks), and the median wall time of its decide() calls is kept:

  decide_us[policy] = median over the S L calls of perf_counter_ns around policy.decide   (microseconds)

The routing (seeded, deterministic): prefix-recompute-like generation of NB = 2 blocks of BL = 32 tokens after
a 32-token prompt, NS = 12 denoising steps per block; step s of block b forwards T_b = 32 (b + 2) tokens. Per
MoE layer l a Zipf popularity over the experts, in a layer-specific random order,

  p_l(e) ~ (rank_l(e) + 1)^-a,  a = 1.0,

and per step a little noise on the log-popularity (sigma = 0.3), so hot experts persist and drift a little as in
recorded traces; each of the T_b tokens picks top_k distinct experts by Gumbel-top-k on those logits (sampling
without replacement proportional to the noisy popularity), and counts[s, l, e] is how many picked e.
Budget: E // 2 experts per layer (at least 1). riptide and tide-opt get the cost model given (the calibrated
profile as measured so far); tide-opt solves its tau on a grid where scipy is missing, as on the GPU machine.

Cost: 24 steps x L layers per policy (llada2-tiny: 72 calls each, well under a second in all; LLaDA2.0-mini, 19
layers x 256 experts: 456 calls each, riptide's ~100 us the largest, about 0.3 s in all with the routing).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from offload.model_spec import ModelSpec
from offload.policies import RUNNABLE, make_policy
from offload.policies.base import StepInfo
from offload.step import RunShape, Stepper
from offload.trace import KIND_DENOISE
from traces.core import count_experts, k_smallest

BLOCKS, BLOCK_LENGTH, STEPS_PER_BLOCK, PROMPT = 2, 32, 12, 32
ZIPF_A, NOISE_SIGMA = 1.0, 0.3
DEFAULT_POLICIES = tuple(n for n in RUNNABLE if n != "all-gpu")  # all-gpu's KEEP is in moe_overhead


def routing(num_layers: int, num_experts: int, top_k: int, seed: int = 0) -> tuple[np.ndarray, list[StepInfo]]:
    """counts [S, L, E] and the steps' StepInfo of the synthetic generation in the module docstring."""
    rng = np.random.default_rng(seed)
    L, E, k = num_layers, num_experts, min(top_k, num_experts)
    base = -ZIPF_A * np.log(np.arange(1, E + 1, dtype=np.float64))  # log Zipf by rank
    logp = np.stack([base[rng.permutation(E)] for _ in range(L)])    # [L, E]: each layer its own hot experts
    counts, steps = [], []
    for b in range(BLOCKS):
        T = PROMPT + (b + 1) * BLOCK_LENGTH  # prefix recompute: the prompt and every block so far
        for j in range(STEPS_PER_BLOCK):
            logits = logp + NOISE_SIGMA * rng.standard_normal((L, E))
            g = logits[:, None, :] + rng.gumbel(size=(L, T, E))       # [L, T, E]
            top = k_smallest(-g, k)                                     # Gumbel-top-k: k distinct experts a token
            counts.append(count_experts(top.swapaxes(0, 1), E)[0])      # [L, E]
            steps.append(StepInfo(index=len(steps), block=b, step_in_block=j, kind=KIND_DENOISE, tokens_forwarded=T))
    return np.stack(counts), steps


def decide_table(spec: ModelSpec, cost: Any, policies: Sequence[str] = DEFAULT_POLICIES,
                 seed: int = 0) -> dict[str, float]:
    """Median microseconds per decide() call of each policy (default parameters), see the module docstring."""
    L, E = spec.num_moe_layers, spec.num_experts
    counts, steps = routing(L, E, spec.top_k, seed)
    shape = RunShape(L, E, spec.top_k, spec.expert_bytes, spec.token_bytes, BLOCK_LENGTH, "prefix-recompute")
    out: dict[str, float] = {}
    for name in policies:
        stepper: Stepper[None] = Stepper(make_policy(name), max(1, E // 2), shape, cost=cost, timed=True)
        stepper.run(counts, steps)
        out[name] = float(np.median(stepper.decide_us))
    return out
