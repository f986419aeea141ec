"""Trace schema v1: what a model routed, per forward pass and MoE layer.

A trace is S forward passes ("steps") of a model with L MoE layers of E routed experts, top-k routing:

  counts[s, l, e]      int32 >= 0: token-assignments of expert e in MoE layer l at step s;
                       sum_e counts[s, l, e] = tokens_forwarded[s] * k
  block[s]             int32: index of the generated block the step belongs to (-1: prompt prefill)
  step_in_block[s]     int32 >= 0: denoising step index within the block (0 for commit/prefill forwards)
  tokens_forwarded[s]  int32 >= 1: tokens the forward pass ran through the network
  context_tokens[s]    int32: keys each forwarded token may attend to at most, in its own sequence, and at least
                       the step's tokens per sequence (prefix-recompute: = tokens_forwarded; block-cache: cached
                       prefix + current block; a batched decode step: one sequence's keys)
  tokens_committed[s]  int32 >= 0: tokens finalised by this step (generated tokens = their sum)
  kind[s]              uint8: 0 denoise, 1 commit (a finished block's forward that writes its keys/values),
                       2 prefill (prompt), 3 decode (autoregressive: one new token)
  topk_ids             optional int16 [sum(tokens_forwarded), L, k]: per-token expert ids, steps in order

Header (JSON): {"version": 1,
  "model": {"name", "config_hash", "num_moe_layers", "num_experts", "top_k"},
  "generation": {"mode": "prefix-recompute" | "block-cache" | "autoregressive", "block_length", "steps",
                 "threshold", "gen_length", "prompt_length", optional "output_tokens", optional "sequences"},
  "origin": {"kind": "recorded" | "synthetic" | "imported", "seed": int | null, ...free fields}}

sequences (default 1): sequences decoded together in every step (a batch of autoregressive requests): a step's
tokens_forwarded are spread over them, each with its own key/value cache of context_tokens keys.

generated_tokens, what tokens/s counts: "output_tokens" when the header has it (the tokens a generation returns:
TIDE's reference cuts its output after the first EOS, so positions committed after it are work, not output),
else the committed tokens, sum(tokens_committed).

Autoregressive decode is expressed with mode "autoregressive", block_length 1, one decode step per token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
MODES = ("prefix-recompute", "block-cache", "autoregressive")
DIFFUSION_MODES = MODES[:2]  # block diffusion: what the runtime generates, the synthetic traces and studies model
ORIGINS = ("recorded", "synthetic", "imported")
KIND_DENOISE, KIND_COMMIT, KIND_PREFILL, KIND_DECODE = 0, 1, 2, 3
KIND_NAMES = {KIND_DENOISE: "denoise", KIND_COMMIT: "commit", KIND_PREFILL: "prefill", KIND_DECODE: "decode"}
STEP_FIELDS = ("block", "step_in_block", "tokens_forwarded", "context_tokens", "tokens_committed", "kind")
STEP_DTYPES = {"block": np.int32, "step_in_block": np.int32, "tokens_forwarded": np.int32,
               "context_tokens": np.int32, "tokens_committed": np.int32, "kind": np.uint8}


@dataclass(frozen=True, eq=False)
class Trace:
    """One trace in memory. Build with :func:`make_trace` (or read with :func:`offload.trace_io.read_trace`)."""

    header: dict[str, Any]
    counts: np.ndarray
    block: np.ndarray
    step_in_block: np.ndarray
    tokens_forwarded: np.ndarray
    context_tokens: np.ndarray
    tokens_committed: np.ndarray
    kind: np.ndarray
    topk_ids: np.ndarray | None = field(default=None)

    @property
    def num_steps(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_moe_layers(self) -> int:
        return int(self.counts.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.counts.shape[2])

    @property
    def top_k(self) -> int:
        return int(self.header["model"]["top_k"])

    @property
    def mode(self) -> str:
        return str(self.header["generation"]["mode"])

    @property
    def sequences(self) -> int:
        """Sequences decoded together in each step (the header's generation.sequences; 1 when absent)."""
        return int(self.header["generation"].get("sequences", 1))

    @property
    def generated_tokens(self) -> int:
        out = self.header["generation"].get("output_tokens")
        return int(self.tokens_committed.sum()) if out is None else int(out)

    @property
    def lm_tokens(self) -> np.ndarray:
        """Tokens whose logits a step computes: the current block on denoise steps, every forwarded token on
        decode steps (one per sequence of a batch), none on commit and prefill forwards (their logits are never
        read)."""
        block_len = int(self.header["generation"].get("block_length", 1))
        denoise = np.minimum(self.tokens_forwarded, block_len)
        return np.select([self.kind == KIND_DENOISE, self.kind == KIND_DECODE],
                         [denoise, self.tokens_forwarded], 0).astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"counts": self.counts, **{f: getattr(self, f) for f in STEP_FIELDS}}
        if self.topk_ids is not None:
            out["topk_ids"] = self.topk_ids
        return out


def model_header(model: Any) -> dict[str, Any]:
    """The header's model section for a :class:`offload.model_spec.ModelSpec`."""
    return {"name": model.name, "config_hash": model.config_hash, "num_moe_layers": model.num_moe_layers,
            "num_experts": model.num_experts, "top_k": model.top_k}
