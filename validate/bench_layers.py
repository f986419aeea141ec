"""Non-expert tables: the runtime's own modules (runtime.model) timed piece by piece, as a forward runs them.

  attention(n, c)  x + attention(input_layernorm(x)) of one decoder layer, n tokens over c keys: c = n with the
                   block-causal mask sliced from a larger one (prefix-recompute, prefill), c > n with c - n keys
                   in a KV cache and no mask (block-cache). Grid tokens x context with the same values on both
                   axes; cells with c < n cannot occur and hold the (n, n) time (bilinear interpolation between
                   a feasible and an infeasible cell then stays close to the diagonal's values).
  embed(n)         word embeddings of n ids + the rotary cos/sin tables (once per forward)
  dense_mlp(n)     x + mlp(post_attention_layernorm(x)) of a dense layer
  moe_dense(n)     the same for a MoE layer with the routed experts left out: router (runtime.router.route),
                   shared expert, residual; the routed experts are a stub returning its input
  lm_head(m)       final norm + lm_head (float32 logits) over m rows, then the sampler of one denoising step
                   (runtime.diffusion.choose over the m rows, the commit write and its count)
  step overhead    seconds per forward of runtime.diffusion.generate itself (the loop, step bookkeeping,
                   recorder, syncs) with a stub model that only evicts the caches (as a real forward does) and
                   returns fixed logits: (wall_s - sum of the stub forwards' times) / forwards, minus the sampler
                   time at the block length (which lm_head(m) already holds): what every forward costs besides
                   the network. Measured in prefix-recompute, where every forward is a denoising step.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from runtime.diffusion import GenerationSettings, choose, generate
from runtime.model import block_causal_mask, rotary_cos_sin
from validate.rig import Rig
from validate.tables import Measured, holdout_record, isotonic_2d, measure_1d
from validate.timing import Clock

_THRESHOLD = 0.95  # the runtime's default confidence threshold
_SETTINGS = GenerationSettings(threshold=_THRESHOLD)  # greedy, as generate's default


class _NullExperts:
    """Routed experts that cost nothing: the MoE module's own work is timed without them."""

    def forward(self, moe_layer: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        return x


def attention_call(rig: Rig, n: int, c: int, block_length: int, full_mask: torch.Tensor) -> Any:
    """A callable running one layer's attention half for n tokens over c keys (see the module docstring)."""
    layer = rig.moe_layer
    s, cfg = rig.spec, rig.cfg
    x = rig.hidden(n)
    cos, sin = rotary_cos_sin(torch.arange(c - n, c, device=rig.device), cfg.rotary_dim, cfg.rope_theta)
    cache, mask = None, None
    if c == n:
        mask = full_mask[:n, :n]  # a view of a larger mask, as generate slices it
    else:
        cache = rig.model.new_cache(capacity=c)
        kv = torch.randn(s.num_kv_heads, c - n, s.head_dim, device=rig.device, dtype=rig.dtype)
        cache.extend(layer.attention.layer_idx, kv, kv.clone())
        cache.advance(c - n)  # later calls write their keys after these and never advance: fixed context
    norm, attn = layer.input_layernorm, layer.attention
    return lambda: x + attn(norm(x), cos, sin, mask, cache)


def attention_table(clock: Clock, rig: Rig, grid: Sequence[int], held: Sequence[tuple[int, int]],
                    block_length: int) -> Measured:
    full = block_causal_mask(max([*grid, *(c for _, c in held)]), block_length, rig.device)
    diag = {n: clock.measure(attention_call(rig, n, n, block_length, full)) for n in grid}
    raw = [[diag[n] if c <= n else clock.measure(attention_call(rig, n, c, block_length, full)) for c in grid]
           for n in grid]
    t = Measured("attention", [float(n) for n in grid], isotonic_2d(raw), y=[float(c) for c in grid],
                 note="one layer: input norm + attention + residual; cells with context < tokens hold (n, n)")
    t.extra["raw_seconds"] = raw
    held = [(n, c) for n, c in held if c >= n and not (n in grid and c in grid)]
    if held:
        meas = [clock.measure(attention_call(rig, n, c, block_length, full)) for n, c in held]
        pred = t.table()(np.array([n for n, _ in held], float), np.array([c for _, c in held], float))
        t.holdout = holdout_record(held, meas, pred.tolist())
    return t


def embed_table(clock: Clock, rig: Rig, grid: Sequence[int], held: Sequence[int]) -> Measured:
    emb, cfg = rig.model.model.word_embeddings, rig.cfg

    def at(n: float) -> float:
        ids = torch.randint(0, rig.spec.vocab_size, (int(n),), device=rig.device)
        pos = torch.arange(int(n), device=rig.device)
        return clock.measure(lambda: (emb(ids), rotary_cos_sin(pos, cfg.rotary_dim, cfg.rope_theta)))

    return measure_1d("embed", grid, held, at, note="word embeddings + rotary tables, once per forward")


def mlp_table(name: str, clock: Clock, rig: Rig, grid: Sequence[int], held: Sequence[int]) -> Measured:
    """``dense_mlp`` (the dense layer) or ``moe_dense`` (the MoE layer without its routed experts)."""
    layer = rig.dense_layer if name == "dense_mlp" else rig.moe_layer
    null = _NullExperts()

    def at(n: float) -> float:
        x = rig.hidden(int(n))
        if name == "dense_mlp":
            return clock.measure(lambda: x + layer.mlp(layer.post_attention_layernorm(x)))
        return clock.measure(lambda: x + layer.mlp(layer.post_attention_layernorm(x), null))

    note = ("dense layer: norm + MLP + residual" if name == "dense_mlp"
            else "MoE layer without routed experts: norm + router + shared expert + residual")
    return measure_1d(name, grid, held, at, note=note)


def _sampler(logits: torch.Tensor, masked: torch.Tensor, block: torch.Tensor) -> int:
    """One denoising step's choice as generate makes it: choose, commit write, committed count (a host sync)."""
    x0, commit = choose(logits, masked, 1, _SETTINGS, None)
    block[commit] = x0[commit]
    return int(commit.sum())


def lm_head_table(clock: Clock, rig: Rig, grid: Sequence[int], held: Sequence[int]) -> Measured:
    m_model = rig.model

    def at(m: float) -> float:
        rows = rig.hidden(int(m))
        masked = torch.ones(int(m), dtype=torch.bool, device=rig.device)
        block = torch.zeros(int(m), dtype=torch.long, device=rig.device)
        return clock.measure(lambda: _sampler(m_model.lm_head(m_model.model.norm(rows)).float(), masked, block))

    return measure_1d("lm_head", grid, held, at, note="final norm + lm_head over m rows + the sampler's choice")


class _StubModel:
    """Evicts the caches and returns fixed logits: generate's own per-forward work is all that is left."""

    def __init__(self, logits: torch.Tensor, flush: Any) -> None:
        self.logits, self.flush = logits, flush

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, mask: Any, cache: Any = None, write_cache: bool = False,
                 logits_rows: Any = None) -> torch.Tensor:
        self.flush()
        if isinstance(logits_rows, slice) and logits_rows.start == logits_rows.stop:
            return self.logits[:0]
        return self.logits

    def new_cache(self, capacity: int = 0) -> None:
        return None


class _StubStore:
    """begin_step/step_counts as the expert store offers them (counts valid for the trace: k experts per token)."""

    def __init__(self, L: int, E: int, k: int) -> None:
        self.L, self.E, self.k = L, E, k
        self.step_counts = np.zeros((L, E), dtype=np.int64)

    def begin_step(self, info: Any) -> None:
        self.step_counts = np.zeros((self.L, self.E), dtype=np.int64)
        self.step_counts[:, : self.k] = info.tokens_forwarded


def step_overhead(clock: Clock, rig: Rig, block_length: int, repeats: int) -> dict[str, float]:
    """Seconds per forward of generate's own work (see the module docstring), with its parts."""
    s, bl = rig.spec, block_length
    logits = torch.randn(bl, s.vocab_size, device=rig.device, dtype=torch.float32)
    logits[:, rig.cfg.mask_token_id] = float("-inf")  # a committed token is never the mask: blocks finish
    settings = GenerationSettings(gen_length=4 * bl, block_length=bl, steps=bl, threshold=_THRESHOLD,
                                  mode="prefix-recompute", stop_at_eos=False)
    prompt = torch.zeros(bl, dtype=torch.long, device=rig.device)
    stub, store = _StubModel(logits, clock.flush), _StubStore(s.num_moe_layers, s.num_experts, s.top_k)
    per = []
    for _ in range(max(2, repeats) + 1):
        res = generate(stub, store, rig.cfg, prompt, settings)
        per.append((res.wall_s - float(np.sum(res.step_times_s))) / max(res.forwards, 1))
    loop = float(np.median(per[1:]))  # the first run warms up
    masked = torch.ones(bl, dtype=torch.bool, device=rig.device)
    block = torch.zeros(bl, dtype=torch.long, device=rig.device)
    sampler = clock.measure(lambda: _sampler(logits, masked, block))
    return {"step_overhead_s": max(0.0, loop - sampler), "loop_per_forward_s": loop, "sampler_s": sampler,
            "block_length": bl}
