"""Synthetic routing traces of block-diffusion generation (LLaDA2.0), calibrated to published statistics.

Generation being modelled (LLaDA2.0 block diffusion, as in runtime/diffusion.py): a prompt of P tokens, then gen_length
tokens in blocks of T = block_length, denoised block by block. Each denoising step forwards the block and
commits some of its masked tokens; a block ends when none is left.

Commit schedule (per block, per denoising step j = 0, 1, ...):
  committed_j = min(masked_j, m_j + X_j),   X_j ~ Poisson(lambda),   masked_{j+1} = masked_j - committed_j
where m_j is LLaDA's scheduled minimum (T // steps, plus one on the first T % steps steps) and lambda is
solved so that T / E[denoising steps per block] = tokens_per_forward exactly (a small dynamic programme over
(step, masked tokens), see :func:`extra_commit_rate`). Which tokens commit is a random order.
Calibrated to: tokens per forward at default decoding, LLaDA2.0-mini 2.55, LLaDA2.0-flash 3.19.

Routing, per MoE layer l (E experts, top-k), all in log space:
  popularity   log p_l(e) = -s log(1 + rank_l(e)) + const    rank_l: a random permutation (Zipf, exponent s)
  block b      q_{b,l} ~ Dirichlet(alpha E p_l)               (mean p_l; small alpha = few experts per block)
  token t      S_{t,e} = (X_{t,e}^2 + Y_{t,e}^2) / 2 ~ Exp(1), X, Y standard normal
               experts(t) = the k smallest S_{t,e} / q_{b,l}(e)
The k smallest of Exp(1) / q are exactly a Gumbel-top-k draw from q (-log S is standard Gumbel): each token's
experts at any one step are a draw without replacement from the block distribution. Across the denoising
steps of a block X and Y follow a Gaussian AR(1) process, so each S stays Exp(1) while drifting slowly:
  X <- a_t X + sqrt(1 - a_t^2) N(0, 1)   (Y alike),   a_t = rho, or rho * rho_c for a token committed by the
                                                       previous step (mask -> real token: an extra jump)
corr(S at steps j, j + d) = a^(2d). A step's count vector per layer is the bincount of its top-k ids.
The state after the block's last step (one more AR step, with the last commits' jumps) is the block's *final*
routing: the one its tokens keep for the rest of generation, because block-causal attention never changes
finished tokens' hidden states. The prompt is routed like finished blocks, one Dirichlet draw per T tokens.
Blocks (and the prompt) draw independent block distributions and noise: no routing carries over a block
boundary except through the shared popularity p_l.

Calibrated to (defaults s = 1.2, alpha = 1.15, rho = 0.998, rho_c = 0.75; tests/traces/test_synthetic.py
checks the targets):
  alpha (block_concentration) and s (popularity_skew): 69.5 distinct experts per layer in one 32-token block
      forward of LLaDA2.0-mini (dMoE, of 256, top-8), together with TIDE's GPU hit ratio 0.93-0.95 for mini with
      128 of 256 experts resident and per-step refresh under prefix recompute, which is about the share of a
      step's assignments taken by its 128 busiest experts (traces.stats "top-half share").
  rho (temporal_correlation), rho_c (commit_correlation): cosine similarity of a layer's count vectors between
      adjacent denoising steps of a block about 0.985, and above 0.95 five steps apart (TIDE), measured on
      block-cache denoising forwards (the block's own 32 tokens); the Gaussian AR(1) drifts diffusively, which
      keeps the lag-5 similarity high while adjacent steps differ by about 1.5%.
Measured with seed 0, gen_length 1024 (traces.stats): mini block-cache 2.56 tokens/forward, 69.4 distinct
experts, cosine 0.986 (adjacent) / 0.966 (lag 5); prefix-recompute top-half share 0.94; flash alike with
3.22 tokens/forward (3.14-3.22 over seeds 0-2). Prefix-recompute cosines are about 0.9999: the static
prefix dominates its counts.

How steps become trace rows (offload/trace.py), for generated block b with n_b denoising steps:
  prefix-recompute: n_b rows, kind 0, tokens_forwarded = context_tokens = P + (b + 1) T; counts = the final
      counts of the prompt and of blocks 0..b-1 plus the block's counts at that step. No prefill, no commit.
  block-cache: one prefill row first (kind 2, block -1, P tokens, the prompt's final counts; omitted when
      P = 0); per block n_b rows of kind 0 forwarding T tokens with context P + (b + 1) T, then one commit row
      (kind 1, step_in_block 0 as the schema prescribes, T tokens, 0 committed, the block's final counts) that
      writes its keys and values. The last block has no commit row: no later forward would read its cache.
The routing timeline does not depend on the mode, so both modes of one seed share every block's routing (the
last block's final state is drawn either way and left unused).
Cost: two float32 normals per (token, layer, expert) and denoising step, then one argpartition; no Python loop
over tokens or experts. LLaDA2.0-flash, gen_length 1024: about 2 s on one core.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp
from scipy.stats import poisson

from offload.errors import TideError
from offload.trace import (DIFFUSION_MODES, KIND_COMMIT, KIND_DENOISE, KIND_PREFILL, SCHEMA_VERSION, STEP_FIELDS,
                           Trace, model_header)
from offload.trace_check import make_trace

# Published tokens per denoising forward at default decoding (routing-stats.md).
TOKENS_PER_FORWARD = {"mini": 2.55, "flash": 3.19}
_LOG_Q_FLOOR = -60.0  # log q below the layer's best expert by more than this counts as e^-60: keeps S/q finite


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of one synthetic trace (see the module docstring for the model and its calibration).

    mode                 "prefix-recompute" (TIDE's released loop) or "block-cache" (dInfer-style KV cache)
    gen_length           generated tokens; a multiple of block_length
    block_length         tokens per block (T)
    prompt_length        prompt tokens (P); any count >= 0
    steps                LLaDA's step budget per block: the scheduled minimum is block_length / steps per step
    tokens_per_forward   mean tokens committed per denoising forward; None: the model's published value
                         (:func:`default_tokens_per_forward`)
    threshold            confidence threshold of the decoder; recorded in the header only
    popularity_skew      s: Zipf exponent of each layer's expert popularity
    block_concentration  alpha: Dirichlet concentration per expert of a block's distribution around it
    temporal_correlation rho: per-step AR(1) coefficient of each token's routing noise within a block
    commit_correlation   rho_c: extra AR(1) coefficient applied when a token is committed (mask -> token)
    seed                 seed of numpy's SeedSequence; every random draw derives from it
    """

    mode: str = "prefix-recompute"
    gen_length: int = 1024
    block_length: int = 32
    prompt_length: int = 128
    steps: int = 32
    tokens_per_forward: float | None = None
    threshold: float = 0.95
    popularity_skew: float = 1.2
    block_concentration: float = 1.15
    temporal_correlation: float = 0.998
    commit_correlation: float = 0.75
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in DIFFUSION_MODES:
            raise TideError(f"synthetic mode {self.mode!r} is not one of {', '.join(DIFFUSION_MODES)}")
        for name, minimum in (("block_length", 1), ("gen_length", 1), ("prompt_length", 0), ("steps", 1),
                              ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise TideError(f"synthetic {name} must be an integer >= {minimum}, got {v!r}")
        if self.gen_length % self.block_length:
            raise TideError(f"synthetic gen_length {self.gen_length} is not a multiple of block_length "
                            f"{self.block_length}")
        if self.tokens_per_forward is not None:
            # the scheduled minimum alone gives the fewest tokens per forward; a whole block per forward would
            # need infinitely many extra commits, so it is reachable only when the minimum already does it
            lo, hi = self.block_length / min(self.steps, self.block_length), self.block_length
            _check_range("tokens_per_forward", self.tokens_per_forward, lo, hi)
            if lo < hi == self.tokens_per_forward:
                raise TideError(f"synthetic tokens_per_forward must be below block_length {hi} when steps > 1")
        _check_range("threshold", self.threshold, 0.0, 1.0)
        _check_range("popularity_skew", self.popularity_skew, 0.0, 10.0)
        _check_range("block_concentration", self.block_concentration, 1e-4, 1e4)
        _check_range("temporal_correlation", self.temporal_correlation, 0.0, 1.0)
        _check_range("commit_correlation", self.commit_correlation, 0.0, 1.0)

    def params(self) -> dict[str, Any]:
        """All fields as JSON-ready values (the header's origin.params)."""
        return {k: (v if isinstance(v, (str, type(None))) else float(v) if isinstance(v, float) else int(v))
                for k, v in asdict(self).items()}


def _check_range(name: str, v: Any, lo: float, hi: float) -> None:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)
    if not ok or not lo <= v <= hi:
        raise TideError(f"synthetic {name} must be a number in [{lo:g}, {hi:g}], got {v!r}")


def default_tokens_per_forward(model: Any) -> float:
    """Published tokens per forward: 3.19 for LLaDA2.0-flash (name or hidden_size 4096), else mini's 2.55."""
    name = str(getattr(model, "name", "")).lower()
    if "flash" in name:
        return TOKENS_PER_FORWARD["flash"]
    if "mini" in name:
        return TOKENS_PER_FORWARD["mini"]
    return TOKENS_PER_FORWARD["flash" if getattr(model, "hidden_size", 0) >= 4096 else "mini"]


def default_config(model: Any, mode: str = "prefix-recompute", **overrides: Any) -> SyntheticConfig:
    """The calibrated defaults for ``model`` in ``mode``, with tokens_per_forward set from the model."""
    base = SyntheticConfig(mode=mode, tokens_per_forward=default_tokens_per_forward(model))
    try:
        return replace(base, **overrides)
    except TypeError as exc:  # an unknown keyword: name it as bad input
        raise TideError(f"synthetic config: {exc}") from None


def resolve(model: Any, cfg: SyntheticConfig) -> SyntheticConfig:
    """``cfg`` with tokens_per_forward filled in from the model when it is None."""
    if cfg.tokens_per_forward is not None:
        return cfg
    return replace(cfg, tokens_per_forward=default_tokens_per_forward(model))


# ---- commit schedule ------------------------------------------------------------------------------------------
def scheduled_minimum(block_length: int, steps: int) -> np.ndarray:
    """LLaDA's per-step minimum commits: block_length // steps, one more on the first block_length % steps."""
    base, extra = divmod(block_length, steps)
    return base + (np.arange(steps) < extra).astype(np.int64)


def _transition(r_max: int, minimum: int, lam: float) -> np.ndarray:
    """P[r, r']: masked tokens r -> r' after one step committing min(r, minimum + Poisson(lam))."""
    r = np.arange(r_max + 1)[:, None]
    r_next = np.arange(r_max + 1)[None, :]
    committed = r - r_next
    extra = committed - minimum
    p = np.where((extra >= 0) & (r_next > 0), poisson.pmf(np.maximum(extra, 0), lam), 0.0)
    # everything that would commit r or more tokens ends the block (r' = 0)
    p[:, 0] = np.where(r[:, 0] <= minimum, 1.0, poisson.sf(r[:, 0] - minimum - 1, lam))
    p[0] = 0.0
    p[0, 0] = 1.0
    return p


def expected_steps_per_block(block_length: int, steps: int, lam: float) -> float:
    """E[denoising steps of one block] for Poisson(lam) extra commits (backward recursion over steps)."""
    remaining = np.zeros(block_length + 1)  # expected steps still to come, by masked tokens; after the last step
    for m in scheduled_minimum(block_length, steps)[::-1]:
        remaining = (np.arange(block_length + 1) > 0) * (1.0 + _transition(block_length, int(m), lam) @ remaining)
    return float(remaining[block_length])


def extra_commit_rate(block_length: int, steps: int, tokens_per_forward: float) -> float:
    """lambda such that block_length / E[steps per block] = tokens_per_forward."""
    def gap(lam: float) -> float:
        return block_length / expected_steps_per_block(block_length, steps, lam) - tokens_per_forward

    if gap(0.0) >= 0.0:
        return 0.0
    hi = 1.0
    while gap(hi) < 0.0:
        hi *= 2.0
        if hi > 1e6:
            raise TideError(f"tokens_per_forward {tokens_per_forward} is not reachable")
    return float(brentq(gap, 0.0, hi, xtol=1e-10))


def commit_schedule(rng: np.random.Generator, block_length: int, minimum: np.ndarray, lam: float) -> np.ndarray:
    """Tokens committed by each denoising step of one block (sums to block_length)."""
    wanted = minimum + rng.poisson(lam, size=minimum.size)
    total = np.cumsum(wanted)
    n = int(np.searchsorted(total, block_length)) + 1  # the minimum alone sums to block_length: n <= steps
    committed = wanted[:n].copy()
    committed[-1] -= total[n - 1] - block_length  # the last step commits only what is left
    return committed


# ---- routing --------------------------------------------------------------------------------------------------
def expert_popularity(rng: np.random.Generator, num_layers: int, num_experts: int, skew: float) -> np.ndarray:
    """log p [L, E]: Zipf(skew) over a random ranking of the experts of each layer."""
    rank = np.argsort(rng.random((num_layers, num_experts)), axis=1)
    log_p = -skew * np.log1p(rank.astype(np.float64))
    return log_p - logsumexp(log_p, axis=1, keepdims=True)


def block_distribution(rng: np.random.Generator, log_p: np.ndarray, concentration: float) -> np.ndarray:
    """log q [..., L, E] ~ log Dirichlet(concentration * E * p), sampled in log space.

    Gamma(a) = Gamma(a + 1) * U^(1/a) keeps tiny shape parameters from underflowing to log 0."""
    shape = concentration * log_p.shape[-1] * np.exp(log_p)
    log_g = np.log(rng.standard_gamma(shape + 1.0)) + np.log(rng.random(shape.shape)) / shape
    return log_g - logsumexp(log_g, axis=-1, keepdims=True)


def selection_weights(log_q: np.ndarray) -> np.ndarray:
    """1 / q as float32 (up to a per-layer factor, which does not change a token's top-k), clipped finite."""
    rel = np.maximum(log_q - log_q.max(axis=-1, keepdims=True), _LOG_Q_FLOOR)
    return np.exp(-rel).astype(np.float32)


def route(xy: np.ndarray, weights: np.ndarray, top_k: int) -> np.ndarray:
    """Top-k expert ids [N, L, k] (int16): the k smallest (X^2 + Y^2) / q per token and layer.

    xy: [2, N, L, E] float32 noise; weights: 1/q broadcastable to [N, L, E]."""
    score = np.square(xy[0])
    score += np.square(xy[1])
    score *= weights
    return np.argpartition(score, top_k - 1, axis=-1)[..., :top_k].astype(np.int16)


def count_ids(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Per-layer expert counts [S, L, E] of ids [S, N, L, k] (one bincount over (step, layer, expert))."""
    S, _, L, _ = ids.shape
    flat = (np.arange(S)[:, None, None, None] * L + np.arange(L)[None, None, :, None]) * num_experts + ids
    return np.bincount(flat.ravel(), minlength=S * L * num_experts).reshape(S, L, num_experts)


@dataclass(frozen=True)
class BlockRouting:
    """One generated block: ids [n + 1, T, L, k] of its n denoising steps plus its final state (last row),
    and tokens committed per denoising step [n]."""

    ids: np.ndarray
    committed: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.committed.size)


def simulate_block(rng: np.random.Generator, log_p: np.ndarray, cfg: SyntheticConfig, top_k: int,
                   lam: float) -> BlockRouting:
    """Denoise one block: commit schedule, then per step an AR(1) move of the noise and a top-k routing."""
    T = cfg.block_length
    L, E = log_p.shape
    committed = commit_schedule(rng, T, scheduled_minimum(T, cfg.steps), lam)
    n = committed.size
    # step at which each token is committed, tokens taken in a random order
    commit_step = np.empty(T, dtype=np.int64)
    commit_step[rng.permutation(T)] = np.repeat(np.arange(n), committed)
    weights = selection_weights(block_distribution(rng, log_p, cfg.block_concentration))
    xy = rng.standard_normal((2, T, L, E), dtype=np.float32)
    innovation = np.empty_like(xy)
    ids = np.empty((n + 1, T, L, top_k), dtype=np.int16)
    ids[0] = route(xy, weights, top_k)
    rho, rho_c = cfg.temporal_correlation, cfg.commit_correlation
    for j in range(1, n + 1):
        # tokens committed by step j-1 enter step j as real tokens: their routing jumps further
        a = np.where(commit_step == j - 1, rho * rho_c, rho).astype(np.float32)[None, :, None, None]
        rng.standard_normal(dtype=np.float32, out=innovation)
        innovation *= np.sqrt(1.0 - a * a)
        xy *= a
        xy += innovation
        ids[j] = route(xy, weights, top_k)
    return BlockRouting(ids=ids, committed=committed)


def route_prompt(rng: np.random.Generator, log_p: np.ndarray, cfg: SyntheticConfig, top_k: int) -> np.ndarray:
    """Final routing of the prompt's tokens [P, L, k]: one block distribution per block_length tokens."""
    P, T = cfg.prompt_length, cfg.block_length
    L, E = log_p.shape
    chunks = -(-P // T)
    weights = selection_weights(block_distribution(rng, np.broadcast_to(log_p, (chunks, L, E)),
                                                   cfg.block_concentration))
    xy = rng.standard_normal((2, P, L, E), dtype=np.float32)
    return route(xy, np.repeat(weights, T, axis=0)[:P], top_k)


def _rng(seq: np.random.SeedSequence) -> np.random.Generator:
    # SFC64: numpy's fastest bit generator for normals here (they are most of the generation time)
    return np.random.Generator(np.random.SFC64(seq))


@dataclass(frozen=True)
class Timeline:
    """Mode-independent routing of one generation: the prompt's final ids and every block's routing."""

    prompt_ids: np.ndarray
    blocks: list[BlockRouting]


def simulate(model: Any, cfg: SyntheticConfig) -> Timeline:
    """Draw the routing timeline. Independent streams per purpose and per block (SeedSequence children), so
    the first blocks do not change with gen_length."""
    L, E, k = model.num_moe_layers, model.num_experts, model.top_k
    lam = extra_commit_rate(cfg.block_length, cfg.steps, resolve(model, cfg).tokens_per_forward)
    root = np.random.SeedSequence(cfg.seed)
    pop_seq, prompt_seq, blocks_seq = root.spawn(3)
    log_p = expert_popularity(_rng(pop_seq), L, E, cfg.popularity_skew)
    prompt_ids = route_prompt(_rng(prompt_seq), log_p, cfg, k)
    n_blocks = cfg.gen_length // cfg.block_length
    blocks = [simulate_block(_rng(s), log_p, cfg, k, lam) for s in blocks_seq.spawn(n_blocks)]
    return Timeline(prompt_ids=prompt_ids, blocks=blocks)


# ---- assembly into trace rows ---------------------------------------------------------------------------------
@dataclass
class _Rows:
    """Trace rows collected block by block, concatenated at the end."""

    counts: list[np.ndarray]
    fields: dict[str, list[np.ndarray]]
    ids: list[np.ndarray] | None

    def add(self, counts: np.ndarray, ids: np.ndarray | None, **fields: Any) -> None:
        n = counts.shape[0]
        self.counts.append(counts)
        for f, v in fields.items():
            self.fields[f].append(np.broadcast_to(np.asarray(v, dtype=np.int64), (n,)))
        if self.ids is not None and ids is not None:
            self.ids.append(ids.reshape(-1, *ids.shape[-2:]))


def _new_rows(with_topk: bool) -> _Rows:
    return _Rows(counts=[], fields={f: [] for f in STEP_FIELDS}, ids=[] if with_topk else None)


def _rows_prefix_recompute(tl: Timeline, cfg: SyntheticConfig, E: int, rows: _Rows) -> None:
    P, T = cfg.prompt_length, cfg.block_length
    prefix_counts = count_ids(tl.prompt_ids[None], E)[0]
    prefix_ids = tl.prompt_ids
    for b, blk in enumerate(tl.blocks):
        n = blk.num_steps
        steps_ids = blk.ids[:n]
        ids = None
        if rows.ids is not None:  # prefix tokens first, in position order, then the block
            ids = np.concatenate([np.broadcast_to(prefix_ids, (n, *prefix_ids.shape)), steps_ids], axis=1)
        ctx = P + (b + 1) * T
        rows.add(prefix_counts[None] + count_ids(steps_ids, E), ids, block=b, step_in_block=np.arange(n),
                 tokens_forwarded=ctx, context_tokens=ctx, tokens_committed=blk.committed, kind=KIND_DENOISE)
        final = blk.ids[n]
        prefix_counts = prefix_counts + count_ids(final[None], E)[0]
        if rows.ids is not None:
            prefix_ids = np.concatenate([prefix_ids, final], axis=0)


def _rows_block_cache(tl: Timeline, cfg: SyntheticConfig, E: int, rows: _Rows) -> None:
    P, T = cfg.prompt_length, cfg.block_length
    if P > 0:
        rows.add(count_ids(tl.prompt_ids[None], E), tl.prompt_ids, block=-1, step_in_block=0, tokens_forwarded=P,
                 context_tokens=P, tokens_committed=0, kind=KIND_PREFILL)
    last = len(tl.blocks) - 1
    for b, blk in enumerate(tl.blocks):
        n = blk.num_steps
        keep = n + 1 if b < last else n  # the commit forward (final state) of all but the last block
        counts = count_ids(blk.ids[:keep], E)
        ctx = P + (b + 1) * T
        kind = np.where(np.arange(keep) < n, KIND_DENOISE, KIND_COMMIT)
        sib = np.where(np.arange(keep) < n, np.arange(keep), 0)  # schema: step_in_block 0 on commit forwards
        committed = np.concatenate([blk.committed, np.zeros(keep - n, dtype=np.int64)])
        rows.add(counts, blk.ids[:keep], block=b, step_in_block=sib, tokens_forwarded=T, context_tokens=ctx,
                 tokens_committed=committed, kind=kind)


def generation_header(model: Any, cfg: SyntheticConfig) -> dict[str, Any]:
    """Schema header; origin.params holds every config field (tokens_per_forward resolved)."""
    return {
        "version": SCHEMA_VERSION,
        "model": model_header(model),
        "generation": {"mode": cfg.mode, "block_length": int(cfg.block_length), "steps": int(cfg.steps),
                       "threshold": float(cfg.threshold), "gen_length": int(cfg.gen_length),
                       "prompt_length": int(cfg.prompt_length)},
        "origin": {"kind": "synthetic", "seed": int(cfg.seed), "generator": "traces.synthetic", "params": cfg.params()},
    }


def generate(model: Any, cfg: SyntheticConfig, *, with_topk: bool = False) -> Trace:
    """A validated synthetic trace of ``model`` (a ModelSpec) under ``cfg``; ``with_topk`` keeps per-token ids."""
    cfg = resolve(model, cfg)
    tl = simulate(model, cfg)
    rows = _new_rows(with_topk)
    if cfg.mode == "prefix-recompute":
        _rows_prefix_recompute(tl, cfg, model.num_experts, rows)
    else:
        _rows_block_cache(tl, cfg, model.num_experts, rows)
    fields = {f: np.concatenate(v) for f, v in rows.fields.items()}
    topk = np.concatenate(rows.ids, axis=0) if rows.ids is not None else None
    return make_trace(generation_header(model, cfg), np.concatenate(rows.counts), topk_ids=topk, **fields)
