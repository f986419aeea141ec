"""The LLaDA2-MoE network in PyTorch (batch size 1; activations are [T, h] for the T tokens of one forward).

Notation as in offload/model_spec.py: h hidden, H query heads, K key/value heads, d head_dim, r rotary_dim,
E experts, k experts per token, V vocabulary. One decoder layer (eps = rms_norm_eps):

  RMSNorm(x)  = w * x / sqrt(mean(x^2) + eps)                           (in float32, cast back)
  attention:  [q | k | v] = x Wqkv^T, Wqkv [(H + 2K) d, h], split by heads into H, K, K heads of d
              q, k <- per-head RMSNorm (weights [d]); rotary on dims [0, r) of q and k:
                  x_rot = x * cos(p f) + rotate_half(x) * sin(p f),  f_j = theta^(-2j / r), j < r/2,
                  rotate_half([a, b]) = [-b, a]  (halves of the r rotary dims); dims [r, d) pass through
              o = softmax(q k^T * d^-0.5 + mask) v  (each group of H/K query heads shares one K/V head)
              attn(x) = o Wdense^T
  layer:      u = x + attn(norm1(x));  out = u + mlp(norm2(u))
  mlp:        dense layers (i < first_k_dense_replace): down(silu(gate(y)) * up(y))
              MoE layers: routed(y) + shared(y), routed = sum_j w_j expert_{id_j}(y) (runtime/router.py picks
              ids and weights; the injected routed experts compute the sum, so routed experts live outside
              this module: on the host, in an expert cache, ...)
  logits = lm_head(RMSNorm(x_L)) in float32.

Attention masks are boolean [T, C] with True = may attend, C = cached tokens + T. Block-diffusion decoding
uses the block-causal mask (token i sees j iff block(j) <= block(i)); since finished blocks never see later
ones, their keys/values never change and :class:`KVCache` holds them exactly.

Parameter names are the checkpoint's (``model.layers.3.attention.query_key_value.weight`` ...), so
``load_state_dict`` takes a checkpoint's non-expert tensors as they are (runtime/checkpoint_layout.py names
the rest; runtime/random_weights.py fills them at random).
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from runtime.config import RuntimeConfig
from runtime.router import route


class RoutedExperts(Protocol):
    """Computes the routed part of one MoE layer: sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t])."""

    def forward(self, moe_layer: int, x: torch.Tensor, topk_ids: torch.Tensor,
                topk_weights: torch.Tensor) -> torch.Tensor: ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # the mean of squares in float32: bf16 loses too much over thousands of dims
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotary_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, rotary_dim] in float32 for integer positions [T] (frequencies repeated over both halves)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32)
                                / rotary_dim))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x [..., T, d] (rotate-half form); the rest pass unchanged."""
    r = cos.shape[-1]
    if r == 0:
        return x
    rot, rest = x[..., :r].float(), x[..., r:]
    half = r // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    out = (rot * cos + rotated * sin).to(x.dtype)
    return torch.cat([out, rest], dim=-1)


def block_causal_mask(total_len: int, block_length: int, device=None) -> torch.Tensor:
    """bool [total, total]: token i may attend j iff j // block_length <= i // block_length."""
    blocks = torch.arange(total_len, device=device) // block_length
    return blocks[None, :] <= blocks[:, None]


class KVCache:
    """Keys and values (after rotary) of committed tokens, per layer [K, length, d].

    Storage per layer is one buffer [K, capacity, d], allocated on the layer's first use with the dtype and
    device of its keys, growing by doubling (``capacity`` presizes it: prompt + generation avoids any
    regrowth). A forward writes the current tokens' K/V into the slots just after ``length`` and attends over
    [0, length + T); only ``write_cache`` advances ``length`` (after all layers ran), so without it those
    slots are scratch that the next forward overwrites -- no concatenation per step.
    """

    def __init__(self, num_layers: int | None = None, capacity: int = 0) -> None:
        self.num_layers, self.capacity = num_layers, capacity
        self._k: dict[int, torch.Tensor] = {}
        self._v: dict[int, torch.Tensor] = {}
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Place k, v [K, T, d] after the cached tokens of ``layer``; returns cache + current [K, length+T, d]."""
        if self.num_layers is not None and not 0 <= layer < self.num_layers:
            raise ValueError(f"KVCache: layer {layer} outside [0, {self.num_layers})")
        end = self.length + k.shape[1]
        old = self._k.get(layer)
        if old is None and self.length:
            raise ValueError(f"KVCache: layer {layer} has no entries but the cache holds {self.length} tokens")
        if old is None or end > old.shape[1]:
            cap = max(end, self.capacity, 2 * old.shape[1] if old is not None else 0)
            for store, cur in ((self._k, k), (self._v, v)):
                grown = cur.new_empty(cur.shape[0], cap, cur.shape[2])
                if old is not None:
                    grown[:, :self.length] = store[layer][:, :self.length]
                store[layer] = grown
        self._k[layer][:, self.length:end] = k
        self._v[layer][:, self.length:end] = v
        return self._k[layer][:, :end], self._v[layer][:, :end]

    def advance(self, n: int) -> None:
        """Commit the n tokens written by the last forward (called by the model when write_cache)."""
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget every token from ``length`` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"KVCache.truncate: {length} is outside [0, {self.length}]")
        self.length = length


class Attention(nn.Module):
    def __init__(self, cfg: RuntimeConfig, layer_idx: int, device=None, dtype=None) -> None:
        super().__init__()
        s = cfg.spec
        self.layer_idx = layer_idx
        self.H, self.K, self.d = s.num_heads, s.num_kv_heads, s.head_dim
        self.query_key_value = nn.Linear(s.hidden_size, (self.H + 2 * self.K) * self.d, bias=False,
                                         device=device, dtype=dtype)
        self.query_layernorm = RMSNorm(self.d, cfg.rms_norm_eps, device, dtype)
        self.key_layernorm = RMSNorm(self.d, cfg.rms_norm_eps, device, dtype)
        self.dense = nn.Linear(self.H * self.d, s.hidden_size, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        T = x.shape[0]
        qkv = self.query_key_value(x).view(T, self.H + 2 * self.K, self.d)
        q, k, v = qkv.split([self.H, self.K, self.K], dim=1)
        q = apply_rotary(self.query_layernorm(q).transpose(0, 1), cos, sin)   # [H, T, d]
        k = apply_rotary(self.key_layernorm(k).transpose(0, 1), cos, sin)     # [K, T, d]
        v = v.transpose(0, 1)
        if cache is not None:
            k, v = cache.extend(self.layer_idx, k, v)                          # [K, C, d]
        if attn_mask is not None and tuple(attn_mask.shape) != (T, k.shape[1]):
            raise ValueError(f"attn_mask must be [{T}, {k.shape[1]}] (current tokens x cached + current), "
                             f"got {tuple(attn_mask.shape)}")
        # Expand K/V heads explicitly rather than enable_gqa: every SDPA backend (incl. the masked
        # memory-efficient one on CUDA) accepts it, and the copy is small next to the weights.
        rep = self.H // self.K
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
        o = F.scaled_dot_product_attention(q[None], k[None], v[None],
                                           attn_mask=None if attn_mask is None else attn_mask[None, None],
                                           scale=self.d ** -0.5)
        return self.dense(o[0].transpose(0, 1).reshape(T, self.H * self.d))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)); the dense MLP and the shared expert."""

    def __init__(self, hidden: int, intermediate: int, device=None, dtype=None) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False, device=device, dtype=dtype)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False, device=device, dtype=dtype)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Router parameters: ``weight`` [E, h] and buffer ``expert_bias`` [E], both in the model dtype as the
    reference holds them (the router adds the bias to float32 scores)."""

    def __init__(self, cfg: RuntimeConfig, device=None, dtype=None) -> None:
        super().__init__()
        E = cfg.spec.num_experts
        self.weight = nn.Parameter(torch.empty(E, cfg.spec.hidden_size, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=cfg.spec.hidden_size ** -0.5)
        bias = torch.zeros(E, device=device, dtype=dtype) if cfg.use_expert_bias else None
        self.register_buffer("expert_bias", bias)


class MoE(nn.Module):
    def __init__(self, cfg: RuntimeConfig, moe_index: int, device=None, dtype=None) -> None:
        super().__init__()
        s = cfg.spec
        self.cfg, self.moe_index = cfg, moe_index
        self.gate = Gate(cfg, device, dtype)
        self.shared_experts = (MLP(s.hidden_size, s.moe_intermediate_size * s.num_shared_experts, device, dtype)
                               if s.num_shared_experts > 0 else None)

    def forward(self, x: torch.Tensor, experts: RoutedExperts | None) -> torch.Tensor:
        if experts is None:
            raise RuntimeError("LLaDA2MoE: no routed experts set (pass experts= or call set_experts)")
        topk_ids, topk_weights = route(x, self.gate.weight, self.gate.expert_bias, self.cfg)
        out = experts.forward(self.moe_index, x, topk_ids, topk_weights).to(x.dtype)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: RuntimeConfig, layer_idx: int, device=None, dtype=None) -> None:
        super().__init__()
        s = cfg.spec
        self.input_layernorm = RMSNorm(s.hidden_size, cfg.rms_norm_eps, device, dtype)
        self.attention = Attention(cfg, layer_idx, device, dtype)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, cfg.rms_norm_eps, device, dtype)
        self.is_moe = layer_idx >= s.first_k_dense_replace
        self.mlp: nn.Module = (MoE(cfg, layer_idx - s.first_k_dense_replace, device, dtype) if self.is_moe
                               else MLP(s.hidden_size, s.intermediate_size, device, dtype))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None, experts: RoutedExperts | None) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), cos, sin, attn_mask, cache)
        y = self.post_attention_layernorm(x)
        return x + (self.mlp(y, experts) if self.is_moe else self.mlp(y))


class Backbone(nn.Module):
    """The ``model.`` prefix of the checkpoint: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: RuntimeConfig, device=None, dtype=None) -> None:
        super().__init__()
        s = cfg.spec
        self.word_embeddings = nn.Embedding(s.vocab_size, s.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, device, dtype) for i in range(s.num_layers))
        self.norm = RMSNorm(s.hidden_size, cfg.rms_norm_eps, device, dtype)


class LLaDA2MoE(nn.Module):
    """LLaDA2-MoE without its routed experts (the injected :class:`RoutedExperts` run them). Inference only: the
    parameters do not require grad."""

    def __init__(self, cfg: RuntimeConfig, experts: RoutedExperts | None = None, device=None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        s = cfg.spec
        self.cfg = cfg
        self.model = Backbone(cfg, device, dtype)
        self.lm_head = nn.Linear(s.hidden_size, s.vocab_size, bias=False, device=device, dtype=dtype)
        self.requires_grad_(False)
        self.set_experts(experts)

    def set_experts(self, experts: RoutedExperts | None) -> None:
        # Bypass nn.Module.__setattr__: routed experts that are themselves a Module must not join this module's
        # parameters / state_dict (their tensors live elsewhere).
        object.__setattr__(self, "_experts", experts)

    @property
    def experts(self) -> RoutedExperts | None:
        return self._experts

    @classmethod
    def from_state(cls, cfg: RuntimeConfig, state: dict[str, torch.Tensor], experts: RoutedExperts | None = None,
                   device=None, dtype: torch.dtype = torch.float32) -> "LLaDA2MoE":
        """Build on the meta device (no wasted init), materialise on ``device`` and load ``state`` strictly."""
        model = cls(cfg, experts, device="meta", dtype=dtype)
        model.to_empty(device=device if device is not None else "cpu")
        model.load_state_dict(state, strict=True)
        return model

    @property
    def num_layers(self) -> int:
        return self.cfg.spec.num_layers

    def new_cache(self, capacity: int = 0) -> KVCache:
        """An empty KV cache for this model; ``capacity`` tokens preallocated on first use."""
        return KVCache(self.num_layers, capacity)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, write_cache: bool = False,
                logits_rows: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Logits float32 [n, V] for ``logits_rows`` of the T = len(input_ids) tokens (None: all rows).

        positions [T] int64 are absolute (rotary) positions. attn_mask bool [T, C], True = may attend,
        C = cache.length + T (None: every token attends to the whole cache and all current tokens).
        write_cache appends the current tokens' K/V to ``cache`` after the forward.
        """
        if write_cache and cache is None:
            raise ValueError("write_cache needs a cache")
        if input_ids.dim() != 1 or positions.shape != input_ids.shape:
            raise ValueError(f"input_ids and positions must both be [T], got {tuple(input_ids.shape)} and "
                             f"{tuple(positions.shape)}")
        x = self.model.word_embeddings(input_ids)
        cos, sin = rotary_cos_sin(positions, self.cfg.rotary_dim, self.cfg.rope_theta)
        for layer in self.model.layers:
            x = layer(x, cos, sin, attn_mask, cache, self._experts)
        if write_cache:
            cache.advance(input_ids.shape[0])
        rows = x if logits_rows is None else x[logits_rows]
        if rows.shape[0] == 0:  # nothing asked for: skip the lm_head (V x h) entirely
            return torch.empty(0, self.cfg.spec.vocab_size, dtype=torch.float32, device=x.device)
        return self.lm_head(self.model.norm(rows)).float()
