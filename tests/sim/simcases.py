"""Small hand-built traces for engine and policy tests."""
from __future__ import annotations

import numpy as np

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
