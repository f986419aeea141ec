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

Length: with eos_stop (default) the block holding EOS is uniform on [eos_blocks_min, eos_blocks_max] = [2, 7]
(1-based, capped at gen_length / T) and generation stops after it, as in TIDE's evaluation; the header keeps
gen_length (the budget) and the trace commits fewer tokens. The EOS is uniform within its block, and the
header's output_tokens (up to and including it; gen_length without EOS) is what tokens/s counts, as TIDE's
evaluation counts its output. Calibrated to: 22 to 92 denoising steps per prompt
(TIDE development runs, mini; routing-stats.md): 2..7 blocks of about 12.5 steps (32 / 2.55).

Routing, per MoE layer l = 0..L-1 (E experts, top-k), x_l = l / (L - 1), all in log space:
  depth        s_l = s (1 + d_s (x_l - 1/2)),  alpha_l = alpha exp(d_a (1/2 - x_l))   (flatter first layers)
  topic        log p_l(e) = -s_l log(1 + rank_l(e)) + const, rank_l a random permutation per seed: each seed is
               one prompt on one "topic"; two seeds' rankings are independent
  drift        u_{i,l}(e) = phi u_{i-1,l}(e) + sigma sqrt(1 - phi^2) N(0, 1), stationary sd sigma, over the chunks
               i of the generation (the prompt's ceil(P / T) chunks of T tokens, then the blocks);
               log p_{i,l} = log p_l + u_{i,l}, renormalised
  block        masked tokens:    q_M = (1 - mu) m_b + mu k,   m_b ~ Dirichlet(alpha_l E p_{b,l})
                                 (mean p_b; small alpha = few experts)
               committed tokens: q_F = (1 - eta) m_b + eta r_b,  r_b ~ Dirichlet(beta E pi_b), pi_b prop. to 1 / p_b
               (eta of a committed token's routing goes to block-specific "content" experts, mostly from the
               layer's unpopular tail): the block's routing drifts in one direction as it unmasks
  mask experts k_l uniform on n_mask experts per layer drawn once per generation from the lower half of the
               layer's base popularity p_l: every masked position carries the same [MASK] embedding, so a share
               mu of every masked token's routing goes to the same few experts, which the prompt and committed
               tokens rarely use; as the block unmasks their counts fall and the content experts' rise
  token t      S_{t,e} = (X_{t,e}^2 + Y_{t,e}^2) / 2 ~ Exp(1), X, Y standard normal
               experts(t) = the k smallest S_{t,e} / q_t(e), q_t = q_M while t is masked at this step, else q_F
The k smallest of Exp(1) / q are exactly a Gumbel-top-k draw from q (-log S is standard Gumbel): each token's
experts at any one step are a draw without replacement from its distribution. Across the denoising
steps of a block X and Y follow a Gaussian AR(1) process, so each S stays Exp(1) while drifting slowly:
  X <- a_t X + sqrt(1 - a_t^2) N(0, 1)   (Y alike),   a_t = rho, or rho * rho_c for a token committed by the
                                                       previous step (mask -> real token: an extra jump)
corr(S at steps j, j + d) = a^(2d). A step's count vector per layer is the bincount of its top-k ids.
The state after the block's last step (one more AR step, every token committed) is the block's *final*
routing: the one its tokens keep for the rest of generation, because block-causal attention never changes
finished tokens' hidden states. The prompt's chunks are routed like finished blocks (by their q_F).

Parameters (defaults: SyntheticConfig's are mini's; flash's differ in the five of MODEL_DEFAULTS), what each is
calibrated to (targets: routing-stats.md, TIDE.md; tests/traces/test_synthetic.py and `python -m sim.synthetic_check`):
  s = popularity_skew 2.0 (flash 2.4), alpha = block_concentration 4.0 (flash 5.0): jointly with eta and beta,
      69.5 distinct experts per layer in one 32-token block forward of LLaDA2.0-mini (dMoE; 256 experts, top-8)
      and TIDE's GPU hit ratio 0.93-0.95 for mini with B = 128 resident and per-step refresh under prefix
      recompute; flash to a hit ratio of about 0.98 at B = 96. A skewed popularity keeps a block's count vector
      dominated by its busiest experts, so the per-token noise below moves the experts near the placement's
      margin (the hit-ratio loss) more than it moves the cosines.
  d_s = skew_depth 1.0 (flash 0.5), d_a = concentration_depth 1.0: OLMoE's per-layer shares (own top-16 of 64
      covers 0.43 / 0.56 / 0.61 of a domain's assignments at layers 0 / 7 / 15): the first layer flatter than the
      deep ones (mini's first-layer skew 0.5 s, last 1.5 s; concentration 1.65 alpha and 0.61 alpha).
  sigma = drift_sd 0.4, phi = drift_correlation 0.7: expert popularity moves from block to block, so a
      placement fixed on the first step (static) loses points of hit ratio to TIDE; two blocks of one generation
      share most of their top halves, two seeds (topics) share about chance: a top-half placement from one seed's
      counts covers about 0.5 of another's (OLMoE across domains, top-32 of 64: 0.47-0.51; own domain 0.68-0.85).
  eta = content_share 0.09 (flash 0.03), beta = content_concentration 0.4 (flash 0.03): the directional drift
      within a block and, with the tail it draws on, the hit ratio (eta 0 gives mini 0.966 at tau = 1).
      Mini's content spreads over many tail experts (beta 0.4): it lowers the hit ratio at little cost in
      cosine; flash's few concentrated ones (beta 0.03) keep its hit ratio near 0.98.
  mu = mask_share 0.05, n_mask = mask_experts 16: the mask experts above. Calibrated with the two below to
      TIDE's hit-ratio loss; alone (mu 0 -> 0.05, 10 seeds) it adds 0.0003 to mini's loss at tau = 5 and 6
      distinct experts per block forward, and costs 0.004 of lag-5 cosine. Concentrating it (mu 0.5 on 2
      experts) adds no loss and drops the lag-5 cosine to 0.91: the mask experts stay busy while any token of
      the block is masked, so a stale placement that holds them loses little.
  rho = temporal_correlation 0.985, rho_c = commit_correlation 0.8: with the above, cosine similarity of a
      layer's count vectors of the block's own tokens (block-cache denoising forwards) between adjacent denoising
      steps about 0.985 (tolerance 0.01), above 0.95 five steps apart (TIDE; which vector TIDE measured is not
      stated), and TIDE's hit-ratio loss of refreshing every tau steps instead of every step (first prompt,
      whole-prompt: 0.0016 / 0.0019 / 0.0021 / 0.0025 at tau 2..5; averaged over steps over 10 prompts: 0.0009 /
      0.0014 / 0.0028 / 0.0040). Per-step noise gives a refresh after the router ran an edge that a stale
      placement lacks; that is most of the loss at tau = 2.
  eos_stop True, eos_blocks_min 2, eos_blocks_max 7: see Length above.
Measured (seeds 0-2, gen_length 1024, prompt 128, EOS stop on; `python -m sim.synthetic_check`; 10 seeds in
brackets where checked), mini: tokens/forward 2.46-2.59 (2.55 in expectation; the short EOS-stopped traces
scatter), 70.1-71.0 distinct experts [69.5-71.2], cosine 0.977 (adjacent, 0.9768-0.9777) / 0.957 (lag 5,
0.9553-0.9578) [0.9527-0.9578], tide hit ratio at tau = 1 0.936-0.947 (mean 0.940) [0.933-0.948], whole-run loss
hit(1) - hit(tau) 0.0012 / 0.0017 / 0.0021 / 0.0024 at tau 2..5 (tau 5: 0.0024-0.0025) [0.0021-0.0027],
step-averaged 0.0012 / 0.0017 / 0.0021 / 0.0023, 26-77 denoising steps, top-half coverage across seeds
0.48-0.53 (mean 0.50); static 0.012-0.024 below tide(tau = 1) (0.025-0.027 on gen_length 256 without EOS stop);
without EOS stop a block's top half covers 0.81 of the next block's final counts and 0.80 ten blocks on, and the
first layer's top-10% share is 0.60 against 0.74-0.76 at the last layer. Flash (B = 96): 3.10-3.20
tokens/forward, hit ratio at tau = 1 0.972-0.985 (mean 0.977), cosine 0.988 (adjacent) / 0.959-0.962 (lag 5)
[mean 0.958, one seed 0.948], loss at tau = 5 0.0016-0.0021. The previous calibration (no mask experts, rho 0.998,
rho_c 0.9, s 1.3, alpha 1.8, d_s 0.5, eta 0.15, beta 0.02, sigma 0.5) reached a loss of only 0.0017 at tau = 5
and a flash lag-5 cosine of 0.939: its drift was a handful of content experts per block with large counts, which
moves the cosine much more than the placement's margin. Generation: well under 1 s per mini trace (EOS stop) on
one core.

How steps become trace rows (offload/trace.py), for generated block b with n_b denoising steps:
  prefix-recompute: n_b rows, kind 0, tokens_forwarded = context_tokens = P + (b + 1) T; counts = the final
      counts of the prompt and of blocks 0..b-1 plus the block's counts at that step. No prefill, no commit.
  block-cache: one prefill row first (kind 2, block -1, P tokens, the prompt's final counts; omitted when
      P = 0); per block n_b rows of kind 0 forwarding T tokens with context P + (b + 1) T, then one commit row
      (kind 1, step_in_block 0 as the schema prescribes, T tokens, 0 committed, the block's final counts) that
      writes its keys and values. The last block has no commit row: no later forward would read its cache.
The routing timeline does not depend on the mode, so both modes of one seed share every block's routing (the
last block's final state is drawn either way and left unused), and the EOS block.
Cost: two float32 normals per (token, layer, expert) and denoising step, then one argpartition; no Python loop
over tokens or experts (loops over blocks and prompt chunks only). LLaDA2.0-flash, gen_length 1024 without EOS
stop: a few seconds on one core.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp
from scipy.stats import poisson

from offload.cli import DEFAULT_PROMPT_LENGTH
from offload.errors import TideError
from offload.trace import (DIFFUSION_MODES, KIND_COMMIT, KIND_DENOISE, KIND_PREFILL, SCHEMA_VERSION, STEP_FIELDS,
                           Trace, model_header)
from offload.trace_check import make_trace
from traces.core import (ar1, check_flag, check_integer, check_number, count_experts, exp_race, k_smallest,
                         synthetic_origin, zipf_logits)

# Published tokens per denoising forward at default decoding (routing-stats.md).
TOKENS_PER_FORWARD = {"mini": 2.55, "flash": 3.19}
# The calibrated parameters that differ by model (see the module docstring): mini to 69.5 distinct experts per
# block forward, TIDE's hit ratio 0.93-0.95 at B = 128 and its loss with tau; flash to a hit ratio of about 0.98 at
# B = 96 with the lag-5 cosine above 0.95. SyntheticConfig's own defaults are mini's.
MODEL_DEFAULTS: dict[str, dict[str, float]] = {
    "mini": {"popularity_skew": 2.0, "block_concentration": 4.0, "skew_depth": 1.0, "content_share": 0.09,
             "content_concentration": 0.4},
    "flash": {"popularity_skew": 2.4, "block_concentration": 5.0, "skew_depth": 0.5, "content_share": 0.03,
              "content_concentration": 0.03},
}
# (popularity_skew, block_concentration) by model, as in MODEL_DEFAULTS
SKEW_AND_CONCENTRATION = {m: (d["popularity_skew"], d["block_concentration"]) for m, d in MODEL_DEFAULTS.items()}
MAX_GEN_LENGTH = 1 << 15  # LLaDA2.0's context (max_position_embeddings); bounds the work asked for up front
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
    popularity_skew      s in [0, 10]: Zipf exponent of expert popularity (geometric mean over layers)
    block_concentration  alpha in [1e-4, 1e4]: Dirichlet concentration per expert of a block's distribution
    temporal_correlation rho in [0, 1]: per-step AR(1) coefficient of each token's routing noise within a block
    commit_correlation   rho_c in [0, 1]: extra AR(1) coefficient applied when a token is committed (mask -> token)
    skew_depth           d_s in [0, 1.9]: skew rises linearly with depth, s_l = s (1 + d_s (x_l - 1/2))
    concentration_depth  d_a in [0, 5]: concentration falls with depth, alpha_l = alpha exp(d_a (1/2 - x_l))
    drift_sd             sigma in [0, 5]: stationary sd of the log-popularity drift across chunks and blocks
    drift_correlation    phi in [0, 1]: its AR(1) coefficient from one chunk or block to the next
    content_share        eta in [0, 1]: share of a committed token's routing moved to the block's content experts
    content_concentration beta in [1e-3, 1e3]: Dirichlet concentration per expert of the content distribution
    mask_share           mu in [0, 1]: share of a masked token's routing that goes to the layer's mask experts
    mask_experts         n_mask, an integer in [1, 4096]: mask experts per layer (at most the lower half's E - E//2)
    eos_stop             stop after the block holding EOS (True) or generate all gen_length tokens (False)
    eos_blocks_min/max   integers in [1, 1e6], min <= max: the block holding EOS is uniform on [min, max]
    seed                 seed of numpy's SeedSequence; every random draw derives from it (one prompt / topic)
    """

    mode: str = "prefix-recompute"
    gen_length: int = 1024
    block_length: int = 32
    prompt_length: int = DEFAULT_PROMPT_LENGTH
    steps: int = 32
    tokens_per_forward: float | None = None
    threshold: float = 0.95
    popularity_skew: float = 2.0
    block_concentration: float = 4.0
    temporal_correlation: float = 0.985
    commit_correlation: float = 0.8
    skew_depth: float = 1.0
    concentration_depth: float = 1.0
    drift_sd: float = 0.4
    drift_correlation: float = 0.7
    content_share: float = 0.09
    content_concentration: float = 0.4
    mask_share: float = 0.05
    mask_experts: int = 16
    eos_stop: bool = True
    eos_blocks_min: int = 2
    eos_blocks_max: int = 7
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in DIFFUSION_MODES:
            raise TideError(f"synthetic mode {self.mode!r} is not one of {', '.join(DIFFUSION_MODES)}")
        for name, minimum in (("block_length", 1), ("gen_length", 1), ("prompt_length", 0), ("steps", 1),
                              ("seed", 0)):
            check_integer(f"synthetic {name}", getattr(self, name), minimum)
        if self.gen_length > MAX_GEN_LENGTH or self.prompt_length > MAX_GEN_LENGTH:
            raise TideError(f"synthetic gen_length and prompt_length are limited to {MAX_GEN_LENGTH} tokens, "
                            f"LLaDA2.0's context (a trace that long takes about a minute), got "
                            f"{max(self.gen_length, self.prompt_length)}")
        if self.gen_length % self.block_length:
            raise TideError(f"synthetic gen_length {self.gen_length} is not a multiple of block_length "
                            f"{self.block_length}")
        if self.tokens_per_forward is not None:
            # the scheduled minimum alone gives the fewest tokens per forward; a whole block per forward would
            # need infinitely many extra commits, so it is reachable only when the minimum already does it
            lo, hi = self.block_length / min(self.steps, self.block_length), self.block_length
            check_number("synthetic tokens_per_forward", self.tokens_per_forward, lo, hi)
            if lo < hi == self.tokens_per_forward:
                raise TideError(f"synthetic tokens_per_forward must be below block_length {hi} when steps > 1")
        for name, lo, hi in _RANGES:
            check_number(f"synthetic {name}", getattr(self, name), lo, hi)
        check_integer("synthetic mask_experts", self.mask_experts, 1, 4096)
        check_flag("synthetic eos_stop", self.eos_stop)
        for name in ("eos_blocks_min", "eos_blocks_max"):
            check_integer(f"synthetic {name}", getattr(self, name), 1, 10**6)
        if self.eos_blocks_min > self.eos_blocks_max:
            raise TideError(f"synthetic eos_blocks_min {self.eos_blocks_min} must be in [1, eos_blocks_max "
                            f"{self.eos_blocks_max}]")


# the valid range of each float field but tokens_per_forward (whose range depends on the block and steps)
_RANGES = (("threshold", 0.0, 1.0), ("popularity_skew", 0.0, 10.0), ("block_concentration", 1e-4, 1e4),
           ("temporal_correlation", 0.0, 1.0), ("commit_correlation", 0.0, 1.0), ("skew_depth", 0.0, 1.9),
           ("concentration_depth", 0.0, 5.0), ("drift_sd", 0.0, 5.0), ("drift_correlation", 0.0, 1.0),
           ("content_share", 0.0, 1.0), ("content_concentration", 1e-3, 1e3), ("mask_share", 0.0, 1.0))


def default_tokens_per_forward(model: Any) -> float:
    """Published tokens per forward: 3.19 for LLaDA2.0-flash (name or hidden_size 4096), else mini's 2.55."""
    name = str(getattr(model, "name", "")).lower()
    if "flash" in name:
        return TOKENS_PER_FORWARD["flash"]
    if "mini" in name:
        return TOKENS_PER_FORWARD["mini"]
    return TOKENS_PER_FORWARD["flash" if getattr(model, "hidden_size", 0) >= 4096 else "mini"]


def model_family(model: Any) -> str:
    """"mini" or "flash": the calibration a model takes (as :func:`default_tokens_per_forward` decides)."""
    return "flash" if default_tokens_per_forward(model) == TOKENS_PER_FORWARD["flash"] else "mini"


def default_config(model: Any, mode: str = "prefix-recompute", **overrides: Any) -> SyntheticConfig:
    """The calibrated defaults for ``model`` in ``mode``: tokens_per_forward and the per-model parameters of
    :data:`MODEL_DEFAULTS` (popularity_skew, block_concentration, content_share, content_concentration)."""
    tpf = default_tokens_per_forward(model)
    base = SyntheticConfig(mode=mode, tokens_per_forward=tpf, **MODEL_DEFAULTS[model_family(model)])
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
def depth_profile(num_layers: int, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer Zipf exponent s_l and Dirichlet concentration alpha_l [L], x_l = l / (L - 1) in [0, 1]:
    s_l = s (1 + skew_depth (x_l - 1/2)),  alpha_l = alpha exp(concentration_depth (1/2 - x_l)):
    the first layer flatter (smaller skew, larger concentration) than the last, geometric means s and alpha."""
    x = np.arange(num_layers) / max(num_layers - 1, 1)
    skew = cfg.popularity_skew * (1.0 + cfg.skew_depth * (x - 0.5))
    conc = cfg.block_concentration * np.exp(cfg.concentration_depth * (0.5 - x))
    return skew, conc


def expert_popularity(rng: np.random.Generator, num_layers: int, num_experts: int, skew: Any) -> np.ndarray:
    """log p [L, E]: Zipf(skew_l) over a random ranking of the experts of each layer (skew: scalar or [L])."""
    log_p = zipf_logits(np.argsort(rng.random((num_layers, num_experts)), axis=1), skew)
    return log_p - logsumexp(log_p, axis=1, keepdims=True)


def block_distribution(rng: np.random.Generator, log_p: np.ndarray, concentration: Any) -> np.ndarray:
    """log q [..., L, E] ~ log Dirichlet(concentration_l * E * p), sampled in log space (concentration: scalar or
    [L]).

    Gamma(a) = Gamma(a + 1) * U^(1/a) keeps tiny shape parameters from underflowing to log 0."""
    shape = np.reshape(concentration, (-1, 1)) * log_p.shape[-1] * np.exp(log_p)
    log_g = np.log(rng.standard_gamma(shape + 1.0)) + np.log(rng.random(shape.shape)) / shape
    return log_g - logsumexp(log_g, axis=-1, keepdims=True)


def masked_and_final(rng: np.random.Generator, log_p: np.ndarray, cfg: SyntheticConfig,
                     concentration: np.ndarray, log_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(log q_M, log q_F) [L, E] of one block, m_b ~ Dirichlet(alpha_l E p_b): masked tokens route by
    q_M = (1 - mu) m_b + mu k (k: the mask experts' distribution ``log_mask``; None: q_M = m_b), committed tokens
    by q_F = (1 - eta) m_b + eta r_b, r_b ~ Dirichlet(beta E pi_b), pi_b proportional to 1 / p_b: eta =
    content_share of a committed token's routing goes to block-specific "content" experts, drawn mostly from the
    layer's unpopular tail (beta = content_concentration per expert)."""
    log_m = block_distribution(rng, log_p, concentration)
    log_pi = -log_p - logsumexp(-log_p, axis=-1, keepdims=True)
    log_r = block_distribution(rng, log_pi, cfg.content_concentration)
    eta = cfg.content_share
    with np.errstate(divide="ignore"):  # eta 0 or 1: log 0 = -inf drops that part
        log_f = np.logaddexp(np.log1p(-eta) + log_m, np.log(eta) + log_r)
        if log_mask is not None:  # masked tokens: mu of their routing to the layer's mask experts
            mu = cfg.mask_share
            log_m = np.logaddexp(np.log1p(-mu) + log_m, np.log(mu) + log_mask)
    return log_m, log_f


def mask_distribution(rng: np.random.Generator, log_p: np.ndarray, n_mask: int) -> np.ndarray:
    """log m [L, E]: uniform over n_mask "mask experts" per layer, drawn from the lower half of the layer's base
    popularity log_p [L, E] (experts the prompt's tokens rarely use); -inf elsewhere."""
    L, E = log_p.shape
    n_mask = min(n_mask, E - E // 2)
    order = np.argsort(-log_p, axis=1)[:, E // 2:]  # the E - E//2 least popular experts of each layer
    pick = np.argsort(rng.random(order.shape), axis=1)[:, :n_mask]
    chosen = np.take_along_axis(order, pick, axis=1)
    log_m = np.full((L, E), -np.inf)
    np.put_along_axis(log_m, chosen, -np.log(n_mask), axis=1)
    return log_m


def selection_weights(log_q: np.ndarray) -> np.ndarray:
    """1 / q as float32 (up to a per-layer factor, which does not change a token's top-k), clipped finite."""
    rel = np.maximum(log_q - log_q.max(axis=-1, keepdims=True), _LOG_Q_FLOOR)
    return np.exp(-rel).astype(np.float32)


def route(xy: np.ndarray, weights: np.ndarray, top_k: int) -> np.ndarray:
    """Top-k expert ids [N, L, k] (int16): the k smallest (X^2 + Y^2) / q per token and layer.

    xy: [2, N, L, E] float32 noise; weights: 1/q broadcastable to [N, L, E]."""
    score = exp_race(xy[0], xy[1])
    score *= weights
    return k_smallest(score, top_k).astype(np.int16)


def count_ids(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Per-layer expert counts [S, L, E] of the steps' ids [S, N, L, k]."""
    S, N = ids.shape[:2]
    return count_experts(ids.reshape(S * N, *ids.shape[2:]), num_experts, np.repeat(np.arange(S), N), S)


@dataclass(frozen=True)
class BlockRouting:
    """One generated block: ids [n + 1, T, L, k] of its n denoising steps plus its final state (last row),
    and tokens committed per denoising step [n]."""

    ids: np.ndarray
    committed: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.committed.size)


def simulate_block(rng: np.random.Generator, log_p: np.ndarray, cfg: SyntheticConfig, top_k: int, lam: float,
                   concentration: np.ndarray, log_mask: np.ndarray | None = None) -> BlockRouting:
    """Denoise one block (log_p [L, E]: its drifted popularity): commit schedule, then per step an AR(1) move of
    the noise and a top-k routing, masked tokens by q_M and committed ones by q_F."""
    T = cfg.block_length
    L, E = log_p.shape
    committed = commit_schedule(rng, T, scheduled_minimum(T, cfg.steps), lam)
    n = committed.size
    # step at which each token is committed, tokens taken in a random order
    commit_step = np.empty(T, dtype=np.int64)
    commit_step[rng.permutation(T)] = np.repeat(np.arange(n), committed)
    log_m, log_f = masked_and_final(rng, log_p, cfg, concentration, log_mask)
    w_m, w_f = selection_weights(log_m), selection_weights(log_f)  # [L, E] each
    xy = rng.standard_normal((2, T, L, E), dtype=np.float32)
    innovation = np.empty_like(xy)
    ids = np.empty((n + 1, T, L, top_k), dtype=np.int16)
    ids[0] = route(xy, w_m, top_k)
    rho, rho_c = cfg.temporal_correlation, cfg.commit_correlation
    for j in range(1, n + 1):
        # tokens committed by step j-1 enter step j as real tokens: their routing jumps further
        a = np.where(commit_step == j - 1, rho * rho_c, rho).astype(np.float32)[None, :, None, None]
        rng.standard_normal(dtype=np.float32, out=innovation)
        innovation *= np.sqrt(1.0 - a * a)
        xy *= a
        xy += innovation
        weights = np.where((commit_step < j)[:, None, None], w_f[None], w_m[None])  # [T, L, E]
        ids[j] = route(xy, weights, top_k)
    return BlockRouting(ids=ids, committed=committed)


def route_prompt(rng: np.random.Generator, log_p: np.ndarray, cfg: SyntheticConfig, top_k: int,
                 concentration: np.ndarray) -> np.ndarray:
    """Final routing of the prompt's tokens [P, L, k]; log_p [C, L, E]: the drifted popularity of each of its
    C = ceil(P / T) chunks of block_length tokens, one final (committed) distribution per chunk."""
    P, T = cfg.prompt_length, cfg.block_length
    E = log_p.shape[-1]
    log_f = np.stack([masked_and_final(rng, lp, cfg, concentration)[1] for lp in log_p]) if P else log_p
    xy = rng.standard_normal((2, P, log_p.shape[1], E), dtype=np.float32)
    return route(xy, np.repeat(selection_weights(log_f), T, axis=0)[:P], top_k)


def popularity_drift(seqs: list[np.random.SeedSequence], shape: tuple[int, int], sd: float, corr: float,
                     start: np.ndarray | None = None) -> np.ndarray:
    """u [n, L, E]: Gaussian AR(1) across n chunks, stationary sd ``sd``: u_i = corr u_(i-1) + sd sqrt(1 - corr^2)
    e_i, with u_(-1) = ``start`` (None: u_0 = sd e_0, stationary); e_i from seqs[i], so earlier chunks do not
    depend on how many follow. A loop over chunks, not tokens, for the draws."""
    e = np.array([_rng(s).standard_normal(shape) for s in seqs]).reshape(-1, *shape)
    x = sd * np.sqrt(1.0 - corr * corr) * e
    x[:1] = sd * e[:1] if start is None else corr * start + x[:1]
    return ar1(x, corr)


def eos_blocks(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[int, int]:
    """(generated blocks, output tokens). Without EOS stop: every block, gen_length tokens. With it the block
    holding EOS is uniform on [eos_blocks_min, eos_blocks_max] (1-based), generation stops after it, and the
    EOS is uniform within it: the output (what TIDE's evaluation counts) ends with it. An EOS block beyond
    gen_length / T means no EOS: every block, gen_length tokens."""
    n_blocks = cfg.gen_length // cfg.block_length
    if not cfg.eos_stop:
        return n_blocks, cfg.gen_length
    at = int(rng.integers(cfg.eos_blocks_min, cfg.eos_blocks_max + 1))
    pos = int(rng.integers(0, cfg.block_length))  # drawn after the block: the block count is unchanged by it
    if at > n_blocks:
        return n_blocks, cfg.gen_length
    return at, (at - 1) * cfg.block_length + pos + 1


def _rng(seq: np.random.SeedSequence) -> np.random.Generator:
    # SFC64: numpy's fastest bit generator for normals here (they are most of the generation time)
    return np.random.Generator(np.random.SFC64(seq))


@dataclass(frozen=True)
class Timeline:
    """Mode-independent routing of one generation: the prompt's final ids and every block's routing."""

    prompt_ids: np.ndarray
    blocks: list[BlockRouting]
    output_tokens: int  # the generation's output: up to and including its EOS (module docstring, Length)


def simulate(model: Any, cfg: SyntheticConfig) -> Timeline:
    """Draw the routing timeline. Independent streams per purpose and per block (SeedSequence children), so
    the first blocks do not change with gen_length."""
    L, E, k = model.num_moe_layers, model.num_experts, model.top_k
    lam = extra_commit_rate(cfg.block_length, cfg.steps, resolve(model, cfg).tokens_per_forward)
    root = np.random.SeedSequence(cfg.seed)
    # spawn(6) keeps the first five children of spawn(5): traces without mask experts are unchanged
    pop_seq, prompt_seq, blocks_seq, drift_seq, eos_seq, mask_seq = root.spawn(6)
    skew, conc = depth_profile(L, cfg)
    log_p = expert_popularity(_rng(pop_seq), L, E, skew)
    chunks = -(-cfg.prompt_length // cfg.block_length)
    n_blocks, output_tokens = eos_blocks(_rng(eos_seq), cfg)
    prompt_drift, block_drift = drift_seq.spawn(2)
    u_prompt = popularity_drift(prompt_drift.spawn(chunks), (L, E), cfg.drift_sd, cfg.drift_correlation)
    # the blocks' drift continues from the prompt's last chunk (stationary start without a prompt)
    u_blocks = popularity_drift(block_drift.spawn(n_blocks), (L, E), cfg.drift_sd, cfg.drift_correlation,
                                u_prompt[-1] if chunks else None)
    def norm(x: np.ndarray) -> np.ndarray:
        return x - logsumexp(x, axis=-1, keepdims=True)
    prompt_ids = route_prompt(_rng(prompt_seq), norm(log_p + u_prompt), cfg, k, conc)
    log_mask = mask_distribution(_rng(mask_seq), log_p, cfg.mask_experts) if cfg.mask_share > 0 else None
    blocks = [simulate_block(_rng(s), norm(log_p + u), cfg, k, lam, conc, log_mask)
              for s, u in zip(blocks_seq.spawn(n_blocks), u_blocks)]
    return Timeline(prompt_ids=prompt_ids, blocks=blocks, output_tokens=output_tokens)


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
    prefix_counts = count_experts(tl.prompt_ids, E)[0]
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
        prefix_counts = prefix_counts + count_experts(final, E)[0]
        if rows.ids is not None:
            prefix_ids = np.concatenate([prefix_ids, final], axis=0)


def _rows_block_cache(tl: Timeline, cfg: SyntheticConfig, E: int, rows: _Rows) -> None:
    P, T = cfg.prompt_length, cfg.block_length
    if P > 0:
        rows.add(count_experts(tl.prompt_ids, E), tl.prompt_ids, block=-1, step_in_block=0, tokens_forwarded=P,
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


def generation_header(model: Any, cfg: SyntheticConfig, output_tokens: int) -> dict[str, Any]:
    """Schema header; origin.params holds every config field (tokens_per_forward resolved)."""
    return {
        "version": SCHEMA_VERSION,
        "model": model_header(model),
        "generation": {"mode": cfg.mode, "block_length": int(cfg.block_length), "steps": int(cfg.steps),
                       "threshold": float(cfg.threshold), "gen_length": int(cfg.gen_length),
                       "prompt_length": int(cfg.prompt_length), "output_tokens": int(output_tokens)},
        "origin": synthetic_origin("traces.synthetic", cfg),
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
    return make_trace(generation_header(model, cfg, tl.output_tokens), np.concatenate(rows.counts), topk_ids=topk,
                      **fields)
