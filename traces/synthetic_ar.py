"""Synthetic routing traces of autoregressive (AR) decode, calibrated to published AR locality.

Generation being modelled: B sequences decoded together (B = ``batch``, 1 by default), each with a prompt of P
tokens, then G = ``gen_length`` new tokens, one per forward pass and sequence, with a KV cache. Trace rows
(schema v1, mode ``"autoregressive"``, block_length 1; offload/trace.py):

  prefill      1 row:  kind 2, block -1, tokens_forwarded = B P, nothing committed, context_tokens = P (per
               sequence: the header's generation.sequences = B says each of the B has its own cache)
  decode t     G rows, t = 0..G-1: kind 3, block t, tokens_forwarded = B, tokens_committed = B,
               context_tokens = P + t + 1   (the keys one sequence's new token attends to: its prompt, the t
               tokens generated before it and itself; the simulator reads B such caches per step)

Routing, per MoE layer l = 0..L-1 (E experts, top-k), sequence b and token position t = 0..P+G-1 (prompt tokens
first), all in log space:
  topic        log p_l(e) = -s log(1 + rank_l(e)),  rank_l a random permutation per layer and seed (one seed =
               one prompt on one "topic": two seeds' rankings are independent)
  drift        u_{t,l}(e) = phi u_{t-1,l}(e) + sigma sqrt(1 - phi^2) N(0, 1),  u_0 ~ N(0, sigma^2) (stationary):
               the working set of a layer moves slowly along the text (correlation time 1 / (1 - phi) tokens);
               each sequence of a batch drifts on its own
  token        S_{t,e} = (X_{t,e}^2 + Y_{t,e}^2) / 2 ~ Exp(1), X and Y standard normal AR(1) processes over t with
               coefficient a (token-to-token persistence; corr(S_t, S_{t+d}) = a^(2d)),
               experts(t, l) = the k largest of  log p_l(e) + u_{t,l}(e) - log S_{t,e}
The k largest of log q - log S with S ~ Exp(1) are a Gumbel-top-k draw from q = p e^u: each token's experts
are a draw without replacement from the layer's drifting popularity; a > 0 adds short-range persistence on
top of the reuse that popularity and drift already give. The AR(1) recursions run along t as linear filters
(scipy.signal.lfilter), so there is no Python loop over tokens (loops over layers only).

Parameters (:class:`ARConfig`; per-model defaults in :data:`AR_DEFAULTS`, chosen by the spec's model_type):
  s     = popularity_skew   in [0, 10]   Zipf exponent of a layer's static popularity
  sigma = drift_sd          in [0, 10]   stationary sd of the log-popularity drift
  phi   = drift_correlation in [0, 1)    its AR(1) coefficient per token
  a     = persistence       in [0, 1)    per-token AR(1) coefficient of the routing noise
Calibration targets (routing-stats.md, AR decode, token to token; reuse = |experts(t) & experts(t+1)| / k averaged
over tokens and layers; LRU = a per-layer cache of C experts filled on use, least recently used evicted, a token's
k experts used together; hit rate = share of a token's experts already cached):
  qwen3_moe (Qwen3-30B-A3B, 128 experts, top-8): reuse 0.427 (chance 0.0625), LRU 0.42 / 0.65 / 0.81 at C = 8 /
      16 / 32  ->  s 0.9, sigma 2.2, phi 0.995, a 0.
      Static popularity alone cannot give that curve: with s tuned to the reuse (s 1.35) the LRU rates are
      0.58 / 0.74 at 16 / 32; a slowly moving working set (the drift) is what makes deep caches pay.
  mixtral (Mixtral-8x7B, 8 experts, top-2): reuse 0.38 (chance 0.25)  ->  s 0.5, sigma 0.9, phi 0.995, a 0.
  qwen2_moe (Qwen1.5-MoE-A2.7B, 60 experts, top-4, shared experts): reuse 0.11 (chance 0.067), and the shared
      vLLM-MoE-Logger logs of that model (traces-external; layers 0, 8, 12, 18, 23, the 82 decode steps with all
      25 requests running, row r = one request): reuse 0.114, LRU 0.183 / 0.321 at C = 8 / 16
      ->  s 0.3, sigma 0.2, phi 0.995, a 0.6 (at that shape, 3 seeds: 0.114, 0.192 / 0.325). Its locality is
      short-range: a flat popularity (s 0.4, sigma 0.6, a 0) with the same reuse gives LRU 0.20 / 0.375.
  other families: Qwen3's values (the only model with a measured LRU curve); pass overrides to change them.
Measured (``calibration``: seeds 0-3, prompt 128, gen_length 1024, B = 1; ``python -m traces.synthetic_ar --model M``):
  qwen3-30b-a3b      reuse 0.430 (seeds 0.425-0.439), LRU 0.430 / 0.637 / 0.826 at 8 / 16 / 32 (published 0.42 /
                     0.65 / 0.81)
  mixtral-8x7b       reuse 0.387 (0.382-0.393), LRU 0.675 at 4
  qwen1.5-moe-a2.7b  reuse 0.113 (0.112-0.115), LRU 0.192 / 0.332 at 8 / 16
  (olmoe-1b-7b with Qwen3's values: reuse 0.53, chance 0.125 - unpublished, so uncalibrated)
The drift's correlation time (200 tokens) is long against one trace, so one seed's figures scatter by about
+-0.02; average seeds when comparing.

Cost: three float32 normals per (token, sequence, layer, expert) and one argpartition; Qwen3-30B-A3B with 1,088
tokens takes about a second on one core.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from offload.cli import DEFAULT_PROMPT_LENGTH
from offload.errors import TideError, run_cli
from offload.trace import KIND_DECODE, Trace, model_header
from traces.core import (ar1, autoregressive_trace, check_flag, check_integer, check_number, check_topk_fits,
                         count_experts, exp_race, k_smallest, synthetic_origin, zipf_logits)

# Per-family parameters (module docstring: what each is calibrated to).
AR_DEFAULTS: dict[str, dict[str, float]] = {
    "qwen3_moe": {"popularity_skew": 0.9, "drift_sd": 2.2, "drift_correlation": 0.995, "persistence": 0.0},
    "mixtral": {"popularity_skew": 0.5, "drift_sd": 0.9, "drift_correlation": 0.995, "persistence": 0.0},
    "qwen2_moe": {"popularity_skew": 0.3, "drift_sd": 0.2, "drift_correlation": 0.995, "persistence": 0.6},
}
# Published AR locality (routing-stats.md) by model_type: next-token reuse, chance reuse k / E, LRU hit rates by
# cache size (experts per layer).
PUBLISHED: dict[str, dict[str, Any]] = {
    "qwen3_moe": {"model": "Qwen3-30B-A3B", "reuse": 0.427, "chance": 0.0625, "lru": {8: 0.42, 16: 0.65, 32: 0.81}},
    "mixtral": {"model": "Mixtral-8x7B", "reuse": 0.38, "chance": 0.25, "lru": {}},
    "qwen2_moe": {"model": "Qwen1.5-MoE-A2.7B", "reuse": 0.11, "chance": 0.067, "lru": {}},
}
MAX_TOKENS = 1 << 17  # prompt + generated tokens per sequence: bounds the work asked for up front
MAX_BATCH = 4096


@dataclass(frozen=True)
class ARConfig:
    """Parameters of one synthetic AR trace (module docstring: the model and its calibration).

    prompt_length      P, an integer in [1, 131072]: prompt tokens per sequence
    gen_length         G, an integer in [1, 131072]: tokens generated per sequence (decode rows)
    batch              B, an integer in [1, 4096]: sequences decoded together (tokens forwarded per decode row)
    popularity_skew    s in [0, 10]
    drift_sd           sigma in [0, 10]
    drift_correlation  phi in [0, 0.9999]
    persistence        a in [0, 0.9999]
    seed               an integer >= 0: numpy SeedSequence entropy; every draw derives from it
    keep_topk          keep per-token expert ids in the trace (topk_ids)
    """

    prompt_length: int = DEFAULT_PROMPT_LENGTH
    gen_length: int = 256
    batch: int = 1
    popularity_skew: float = 0.9
    drift_sd: float = 2.2
    drift_correlation: float = 0.995
    persistence: float = 0.0
    seed: int = 0
    keep_topk: bool = True

    def __post_init__(self) -> None:
        for name, lo, hi in (("prompt_length", 1, MAX_TOKENS), ("gen_length", 1, MAX_TOKENS),
                             ("batch", 1, MAX_BATCH), ("seed", 0, 2**63 - 1)):
            check_integer(f"synthetic AR {name}", getattr(self, name), lo, hi)
        if self.prompt_length + self.gen_length > MAX_TOKENS:
            raise TideError(f"synthetic AR prompt_length + gen_length must be at most {MAX_TOKENS}, got "
                            f"{self.prompt_length + self.gen_length}")
        for name, lo, hi in (("popularity_skew", 0.0, 10.0), ("drift_sd", 0.0, 10.0),
                             ("drift_correlation", 0.0, 0.9999), ("persistence", 0.0, 0.9999)):
            check_number(f"synthetic AR {name}", getattr(self, name), lo, hi)
        check_flag("synthetic AR keep_topk", self.keep_topk)


def default_ar_config(model: Any, **overrides: Any) -> ARConfig:
    """The calibrated parameters for ``model``'s family (:data:`AR_DEFAULTS`; Qwen3's for the others), with
    ``overrides`` (any :class:`ARConfig` field) on top."""
    fam = AR_DEFAULTS.get(getattr(model, "model_type", ""), AR_DEFAULTS["qwen3_moe"])
    try:
        return ARConfig(**{**fam, **overrides})
    except TypeError as exc:  # an unknown field name
        raise TideError(f"synthetic AR config: {exc}") from None


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], coef: float) -> np.ndarray:
    """Stationary standard-normal AR(1) processes along axis 0: x_0 = z_0, x_t = c x_{t-1} + sqrt(1 - c^2) z_t."""
    z = rng.standard_normal(shape, dtype=np.float32)
    if coef == 0.0:
        return z
    z[1:] *= np.float32(np.sqrt(1.0 - coef * coef))
    return ar1(z, coef).astype(np.float32, copy=False)


def route_tokens(num_moe_layers: int, num_experts: int, top_k: int, cfg: ARConfig) -> np.ndarray:
    """Expert ids [T, B, L, k] (int64) of every token position t = 0..P+G-1 (prompt first) of the B sequences,
    in descending routing score (module docstring: Routing)."""
    L, E, k = num_moe_layers, num_experts, top_k
    T, B = cfg.prompt_length + cfg.gen_length, cfg.batch
    ids = np.empty((T, B, L, k), dtype=np.int64)
    # one child stream per layer: a layer's draws do not depend on how many layers come before it
    for l, seq in enumerate(np.random.SeedSequence(cfg.seed).spawn(L)):
        rng = np.random.default_rng(seq)
        log_p = zipf_logits(rng.permutation(E), cfg.popularity_skew).astype(np.float32)
        score = np.broadcast_to(log_p, (T, B, E)).copy()
        if cfg.drift_sd > 0:
            score += np.float32(cfg.drift_sd) * _ar1(rng, (T, B, E), float(cfg.drift_correlation))
        x = _ar1(rng, (T, B, E), float(cfg.persistence))
        y = _ar1(rng, (T, B, E), float(cfg.persistence))
        s = 0.5 * exp_race(x, y)
        score -= np.log(np.maximum(s, np.float32(1e-30)))  # S = 0 has probability 0; the floor keeps it finite
        top = k_smallest(-score, k)
        order = np.argsort(-np.take_along_axis(score, top, axis=-1), axis=-1)  # descending score: deterministic
        ids[:, :, l] = np.take_along_axis(top, order, axis=-1)
    return ids


def synthetic_ar_trace(model: Any, cfg: ARConfig | None = None) -> Trace:
    """A schema-v1 autoregressive trace for ``model`` (a ModelSpec: num_moe_layers, num_experts, top_k, name,
    config_hash); ``cfg`` None: :func:`default_ar_config`."""
    cfg = default_ar_config(model) if cfg is None else cfg
    L, E, k = model.num_moe_layers, model.num_experts, model.top_k
    if cfg.keep_topk:
        check_topk_fits(model)
    P, G, B = cfg.prompt_length, cfg.gen_length, cfg.batch
    ids = route_tokens(L, E, k, cfg)
    # trace token order: the prefill's tokens sequence by sequence (b, then t), then each decode row's B tokens
    prompt = ids[:P].transpose(1, 0, 2, 3).reshape(B * P, L, k)
    gen = ids[P:].reshape(G * B, L, k)
    tokens = np.concatenate([prompt, gen])
    group = np.concatenate([np.zeros(B * P, dtype=np.int64), np.repeat(np.arange(1, G + 1), B)])
    origin = synthetic_origin("traces.synthetic_ar", cfg, batch=B)
    return autoregressive_trace(model_header(model), count_experts(tokens, E, group, G + 1), origin,
                                tokens=np.concatenate([[B * P], np.full(G, B)]),
                                context=np.concatenate([[P], P + np.arange(1, G + 1)]), committed=B, prefill=True,
                                topk_ids=tokens if cfg.keep_topk else None, prompt_length=P, sequences=B)


# ---- locality measures --------------------------------------------------------------------------------------

def next_token_reuse(ids: np.ndarray, num_experts: int) -> float:
    """Mean |experts(t) & experts(t+1)| / k over consecutive tokens of ids [T, S, L, k] (S independent streams:
    sequences, or sequences x layers)."""
    T, k = ids.shape[0], ids.shape[-1]
    if T < 2:
        raise TideError("next-token reuse needs at least two tokens")
    member = np.zeros(ids.shape[:-1] + (num_experts,), dtype=bool)
    np.put_along_axis(member, ids, True, axis=-1)
    return float((member[1:] & member[:-1]).sum() / (k * (T - 1) * np.prod(ids.shape[1:-1])))


def lru_hit_rate(ids: np.ndarray, num_experts: int, capacity: int) -> float:
    """Hit rate of a per-stream LRU cache of ``capacity`` experts over ids [T, S, L, k] (module docstring: LRU;
    cold start, hits counted from the second token). A token's k experts are used together; among them the
    first (highest score) counts as the most recent. Loops over tokens (numpy over streams and layers)."""
    T, k = ids.shape[0], ids.shape[-1]
    if not k <= capacity <= num_experts:
        raise TideError(f"LRU capacity must be in [top-k {k}, experts {num_experts}], got {capacity}")
    flat = ids.reshape(T, -1, k)
    n = flat.shape[1]
    last = np.full((n, num_experts), -1, dtype=np.int64)  # time of last use, -1: never used
    rows = np.arange(n)[:, None]
    stamp = (k - 1 - np.arange(k))[None, :]
    hits = 0
    for t in range(T):
        if t:
            if capacity < num_experts:
                kth = np.partition(last, num_experts - capacity, axis=1)[:, num_experts - capacity]
                cached = (last >= kth[:, None]) & (last >= 0)  # times are unique per stream: exactly C cached
            else:
                cached = last >= 0
            hits += int(cached[rows, flat[t]].sum())
        last[rows, flat[t]] = t * k + stamp
    return hits / (k * (T - 1) * n)


@dataclass(frozen=True)
class ARCalibration:
    """Measured locality of synthetic traces for one model next to the published figures (None: unpublished)."""

    model: str
    model_type: str
    seeds: tuple[int, ...]
    reuse: float                  # mean over seeds
    reuse_by_seed: tuple[float, ...]
    chance: float                 # k / E
    lru: dict[int, float]         # capacity -> hit rate, mean over seeds
    published_reuse: float | None
    published_lru: dict[int, float]

    def lines(self) -> list[str]:
        pub = PUBLISHED.get(self.model_type, {})
        out = [f"{self.model} ({self.model_type}), seeds {', '.join(map(str, self.seeds))}",
               f"  next-token reuse {self.reuse:.3f} (seeds {', '.join(f'{r:.3f}' for r in self.reuse_by_seed)}); "
               f"published {self.published_reuse if self.published_reuse is not None else '-'}"
               f"{' (' + pub['model'] + ')' if pub else ''}; chance {self.chance:.4f}"]
        for c, v in self.lru.items():
            p = self.published_lru.get(c)
            shown = "-" if p is None else p
            out.append(f"  LRU hit rate, {c} experts cached per layer: {v:.3f}; published {shown}")
        return out


def calibration(model: Any, cfg: ARConfig | None = None, seeds: Sequence[int] = (0, 1, 2, 3),
                capacities: Sequence[int] | None = None) -> ARCalibration:
    """Measure next-token reuse and per-layer LRU hit rates of ``model``'s synthetic AR routing (``cfg`` None:
    the calibrated defaults with prompt DEFAULT_PROMPT_LENGTH (128) and gen_length 1024), for comparison with
    :data:`PUBLISHED`. ``capacities`` None: k, 2k and 4k (capped at E)."""
    cfg = default_ar_config(model, gen_length=1024) if cfg is None else cfg
    L, E, k = model.num_moe_layers, model.num_experts, model.top_k
    caps = sorted({min(c, E) for c in (capacities or (k, 2 * k, 4 * k))})
    reuse, lru = [], {c: [] for c in caps}
    for seed in seeds:
        ids = route_tokens(L, E, k, replace(cfg, seed=int(seed)))
        reuse.append(next_token_reuse(ids, E))
        for c in caps:
            lru[c].append(lru_hit_rate(ids, E, c))
    mtype = str(getattr(model, "model_type", ""))
    pub = PUBLISHED.get(mtype, {})
    return ARCalibration(model=str(model.name), model_type=mtype, seeds=tuple(int(s) for s in seeds),
                         reuse=float(np.mean(reuse)), reuse_by_seed=tuple(reuse), chance=k / E,
                         lru={c: float(np.mean(v)) for c, v in lru.items()}, published_reuse=pub.get("reuse"),
                         published_lru=dict(pub.get("lru", {})))


def trace_locality(trace: Trace, capacities: Sequence[int] = ()) -> tuple[float, dict[int, float]]:
    """(next-token reuse, {capacity: LRU hit rate}) of a trace's decode rows, from its topk_ids: token j of
    consecutive decode rows is taken as one sequence (exact for batch 1 and for this module's traces; for a
    batch whose requests finish, only the first min(B) rows are used)."""
    if trace.topk_ids is None:
        raise TideError("trace has no per-token expert ids (topk_ids): cannot measure token-to-token locality")
    decode = np.flatnonzero(trace.kind == KIND_DECODE)
    if decode.size < 2:
        raise TideError("trace has fewer than two decode steps")
    start = np.cumsum(trace.tokens_forwarded, dtype=np.int64) - trace.tokens_forwarded
    b = int(trace.tokens_forwarded[decode].min())
    rows = start[decode][:, None] + np.arange(b)[None, :]  # [T, b] token index
    ids = trace.topk_ids[rows].astype(np.int64)            # [T, b, L, k]
    E = trace.num_experts
    return next_token_reuse(ids, E), {int(c): lru_hit_rate(ids, E, int(c)) for c in capacities}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m traces.synthetic_ar --model M [--seeds 0 1 2 3] [--out TRACE.npz]``: print the calibration
    (and write one trace with the defaults)."""
    from offload.cli import Parser, add_model
    from offload.model_spec import ModelSpec
    from offload.trace_io import write_trace

    ap = Parser(prog="python -m traces.synthetic_ar", description=__doc__.splitlines()[0])
    add_model(ap, default="qwen3-30b-a3b")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="seeds to measure (default 0-3)")
    ap.add_argument("--gen-length", type=int, default=1024, help="tokens generated per sequence (default 1024)")
    ap.add_argument("--prompt-length", type=int, default=DEFAULT_PROMPT_LENGTH,
                    help=f"prompt tokens (default {DEFAULT_PROMPT_LENGTH})")
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    ap.add_argument("--out", default=None, help="also write the first seed's trace here (.npz)")
    a = ap.parse_args(argv)
    model = ModelSpec.load(a.model)
    cfg = default_ar_config(model, gen_length=a.gen_length, prompt_length=a.prompt_length, batch=a.batch)
    print("\n".join(calibration(model, cfg, seeds=a.seeds).lines()))
    if a.out:
        out = write_trace(synthetic_ar_trace(model, replace(cfg, seed=a.seeds[0])), a.out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
