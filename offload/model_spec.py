"""A MoE model spec, read from a Hugging Face ``config.json``; sizes, FLOPs and bytes per operator.

Families (model_type): llada2_moe, llada_moe, mixtral, qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3, olmoe,
gpt_oss; :mod:`offload.model_families` reads each one's keys. Notation: h = hidden_size, I = dense MLP width,
i = routed expert width, W = width of the shared experts together (S i, or Qwen2's
shared_expert_intermediate_size), E = routed experts, k = experts per token, S = shared experts, H = query heads,
K = key/value heads, d = head_dim, V = vocab_size, L = layers, Ld = dense (non-MoE) layers, Lm = L - Ld MoE
layers, b = bytes per parameter of the dtype (2 for bfloat16).

Parameters:
  routed expert          3 h i  (+ 2 i + h with expert biases, gpt-oss)     (gate, up: [i, h]; down: [h, i])
  attention / layer      grouped-query: (H + 2K) d h + H d h, + (H + 2K) d q/k/v bias, + h o bias,
                           + q/k norm (2 d per head, LLaDA2/Qwen3/LLaDA-MoE; H d + K d over all heads, OLMoE),
                           + H attention sinks (gpt-oss)
                         MLA (DeepSeek; r = qk_rope_head_dim, dn = qk_nope_head_dim, dv = v_head_dim, q_lora = rq,
                           kv_lora = rk): h rq + rq + rq H (dn + r)   (or h H (dn + r) without rq)
                           + h (rk + r) + rk + rk H (dn + dv) + H dv h
  dense MLP / layer      3 h I                                               (Ld layers)
  MoE non-routed / layer E h (+ E router bias) + 3 h W (+ h shared-expert gate, Qwen2)
  embeddings, lm_head    V h each (one when tied);  norms  h per RMSNorm (2 per layer + final)
  total  = non-expert + Lm E expert;  active = non-expert + Lm k expert

Bytes: every weight in the dtype, except where quantization_config says otherwise: fp8 (1 byte, plus a float32
scale per weight block) for every decoder-layer linear weight but the router; MXFP4 (4 bits, plus one 8-bit
scale per 32 weights along the input) for the routed experts only.

Costs of one operator for n tokens (FLOPs count a multiply-add as 2; bytes are weights read once plus the
activations read and written, at b bytes each; wb = the operator's weight bytes):
  attention, grouped-query (n tokens attending to c keys; c' = c averaged over the layers with a sliding window
  w capped at w):            2 n h (H+2K) d + 4 n c' H d + 2 n H d h          FLOPs
                             wb + b (2 n h + 2 c' K d)                        bytes  (x, out, K and V)
  attention, MLA (as served with the up-projections absorbed: the cache holds the rk + r latent per key):
                             2 n [h rq + rq H (dn+r)] + 2 n h (rk + r) + 2 n H dn rk
                             + 2 n c H (rk + r) + 2 n c H rk + 2 n H rk dv + 2 n H dv h   FLOPs
                             wb + b (2 n h + c (rk + r))                      bytes
  routed expert with n tokens:               6 n h i FLOPs;   expert_bytes + 2 b n h bytes
  router (float32 logits):                   2 n h E FLOPs;   b E h + 4 n E bytes
  shared expert(s):                          6 n h W (+ 2 n h gate) FLOPs; wb + 2 b n h bytes
  dense MLP:                                 6 n h I FLOPs;   wb + 2 b n h bytes
  lm_head:                                   2 n h V FLOPs;   b (V h + n h) + 4 n V bytes (float32 logits)
Activation traffic for an expert computed on the CPU: one hidden vector (b h bytes) per token-assignment to
the CPU and one back.

All functions take numpy arrays or scalars for n and c and return arrays of the same shape.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from offload.errors import TideError
from offload.presets import preset_or_file
from offload.model_families import LLADA2_SHAPE_FIELDS, READERS

MODEL_PRESETS = {"llada2.0-mini": "llada2.0-mini.json", "llada2.0-flash": "llada2.0-flash.json",
                 "llada2-tiny": "llada2-tiny.json", "llada-moe-7b-a1b": "llada-moe-7b-a1b.json",
                 "mixtral-8x7b": "mixtral-8x7b.json", "qwen1.5-moe-a2.7b": "qwen1.5-moe-a2.7b.json",
                 "qwen3-30b-a3b": "qwen3-30b-a3b.json", "deepseek-v2-lite": "deepseek-v2-lite.json",
                 "deepseek-v3": "deepseek-v3.json", "olmoe-1b-7b": "olmoe-1b-7b.json", "gpt-oss-20b": "gpt-oss-20b.json"}
SUPPORTED_MODEL_TYPES = tuple(READERS)
# Fields that define the shape of the network; the config hash covers exactly these (LLaDA2's, kept as they were,
# and for the other families also the family's own shape fields below, so two shapes never share a hash).
_SHAPE_FIELDS = LLADA2_SHAPE_FIELDS
_SHAPE_ATTRS = ("hidden_size", "intermediate_size", "moe_intermediate_size", "num_layers", "first_k_dense_replace",
                "num_experts", "top_k", "num_shared_experts", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
                "n_group", "topk_group")
_FAMILY_SHAPE_ATTRS = ("model_type", "moe_layer_ids", "shared_expert_intermediate_size", "shared_expert_gate",
                       "router_bias", "qkv_bias", "o_bias", "qk_norm", "attention_sinks", "expert_bias",
                       "sliding_window", "sliding_window_layers", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                       "qk_rope_head_dim", "v_head_dim", "weight_format", "quant_block", "quant_scope",
                       "tie_word_embeddings", "dtype_bytes")


@dataclass(frozen=True)
class OpCost:
    """FLOPs and bytes moved by one operator (scalars or arrays of one shape)."""

    flops: Any
    bytes: Any

    def __add__(self, other: "OpCost") -> "OpCost":
        return OpCost(self.flops + other.flops, self.bytes + other.bytes)


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a MoE network and the sizes derived from it.

    The defaults of the fields after ``tie_word_embeddings`` describe LLaDA2-MoE, so its specs are what they were.
    ``first_k_dense_replace`` is the number of dense (non-MoE) layers; they are the first ones unless
    ``moe_layer_ids`` lists the MoE layers (a Qwen ``mlp_only_layers`` / ``decoder_sparse_step`` pattern).
    """

    name: str
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_layers: int
    first_k_dense_replace: int
    num_experts: int
    top_k: int
    num_shared_experts: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    n_group: int
    topk_group: int
    dtype_bytes: int = 2
    tie_word_embeddings: bool = False
    raw_config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    model_type: str = "llada2_moe"
    moe_layer_ids: tuple[int, ...] | None = None   # None: the last num_moe_layers layers
    shared_expert_intermediate_size: int | None = None  # W; None: num_shared_experts x moe_intermediate_size
    shared_expert_gate: bool = False    # Qwen2-MoE: sigmoid(x . g) scales the shared expert's output
    router_bias: bool = True            # a bias of E on the router (LLaDA2 expert bias, V3 correction, gpt-oss)
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: str = "head"               # "head": RMSNorm of d on q and k; "full": over H d and K d; "none"
    attention_sinks: bool = False       # one learned logit per head (gpt-oss)
    expert_bias: bool = False           # biases in the routed expert projections (gpt-oss)
    sliding_window: int = 0
    sliding_window_layers: int = 0      # layers whose attention sees at most sliding_window keys
    q_lora_rank: int = 0                # MLA (kv_lora_rank > 0); q_lora_rank 0 = a direct q projection
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    weight_format: str = ""             # "" (the dtype), "fp8" or "mxfp4"
    quant_block: tuple[int, int] = (0, 0)  # fp8 scale block [out, in]; (0, 0): one scale per matrix
    quant_scope: str = ""               # "experts" (routed experts) or "linears" (all decoder linears but router)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str | None = None) -> "ModelSpec":
        """Build from a parsed config.json; a missing or inconsistent field raises TideError."""
        if not isinstance(config, Mapping):
            raise TideError("config.json must hold a JSON object")
        mtype = config.get("model_type")
        if mtype not in READERS:
            raise TideError(f"unsupported model_type {mtype!r} in config.json (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        fields = READERS[mtype](config)
        return cls(name=name or str(config.get("_name_or_path") or mtype), raw_config=dict(config), **fields)

    @classmethod
    def load(cls, name_or_path: str | Path) -> "ModelSpec":
        """A preset name (``llada2.0-mini``, ``mixtral-8x7b``, ...), a config.json, or a model directory."""
        key = str(name_or_path)
        if key in MODEL_PRESETS:
            config, _ = preset_or_file(key, MODEL_PRESETS, "offload.presets.models", "model")
            return cls.from_config(config, name=key)
        path = Path(key)
        if path.is_dir():  # a model directory: its config.json
            if not (path / "config.json").is_file():
                raise TideError(f"model {key} is a directory without a config.json")
            path = path / "config.json"
        config, _ = preset_or_file(str(path), MODEL_PRESETS, "offload.presets.models", "model",
                                   malformed="malformed config.json")
        return cls.from_config(config, name=path.parent.name if path.name == "config.json" else path.stem)

    # ---- sizes --------------------------------------------------------------------------------------
    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_k_dense_replace

    @property
    def moe_layer_indices(self) -> tuple[int, ...]:
        """The decoder layers that hold a MoE block, in order (the trace's MoE layer m is the m-th of these)."""
        if self.moe_layer_ids is not None:
            return tuple(self.moe_layer_ids)
        return tuple(range(self.first_k_dense_replace, self.num_layers))

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def config_hash(self) -> str:
        """16 hex digits of sha256 over the shape fields: traces recorded on one shape replay only on it."""
        shape: dict[str, Any] = {f: getattr(self, a) for f, a in zip(_SHAPE_FIELDS, _SHAPE_ATTRS)}
        if self.model_type != "llada2_moe":  # LLaDA2's hash predates the other families and must not change
            shape.update({a: getattr(self, a) for a in _FAMILY_SHAPE_ATTRS})
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    def _matrix_bytes(self, out: int, inp: int, quantised: bool) -> int:
        """Bytes of one [out, in] weight matrix in its storage format."""
        if not quantised or not self.weight_format:
            return out * inp * self.dtype_bytes
        if self.weight_format == "mxfp4":  # per 32 inputs (padded): 16 bytes of 4-bit values + one E8M0 scale
            return out * math.ceil(inp / 32) * 17
        bo, bi = self.quant_block  # fp8: one byte per weight + a float32 scale per block
        blocks = math.ceil(out / bo) * math.ceil(inp / bi) if bo else 1
        return out * inp + 4 * blocks

    def _shared_width(self) -> int:
        if self.shared_expert_intermediate_size is not None:
            return self.shared_expert_intermediate_size
        return self.moe_intermediate_size * self.num_shared_experts

    @property
    def expert_params(self) -> int:
        h, i = self.hidden_size, self.moe_intermediate_size
        return 3 * h * i + (2 * i + h) * self.expert_bias

    @property
    def expert_bytes(self) -> int:
        """One routed expert as stored: gate and up [i, h], down [h, i] (+ biases, in the dtype)."""
        h, i, q = self.hidden_size, self.moe_intermediate_size, bool(self.quant_scope)
        bias = (2 * i + h) * self.expert_bias * self.dtype_bytes
        return 2 * self._matrix_bytes(i, h, q) + self._matrix_bytes(h, i, q) + bias

    @property
    def moe_layer_expert_bytes(self) -> int:
        return self.num_experts * self.expert_bytes

    @property
    def routed_expert_bytes(self) -> int:
        return self.num_moe_layers * self.moe_layer_expert_bytes

    @property
    def token_bytes(self) -> int:
        """Bytes of one hidden vector (one token's activation crossing the link)."""
        return self.hidden_size * self.dtype_bytes

    def _attention_matrices(self) -> list[tuple[int, int]]:
        """[out, in] of each projection of one attention layer."""
        h, H = self.hidden_size, self.num_heads
        if self.is_mla:
            rq, rk, r = self.q_lora_rank, self.kv_lora_rank, self.qk_rope_head_dim
            dn, dv = self.qk_nope_head_dim, self.v_head_dim
            q = [(rq, h), (H * (dn + r), rq)] if rq else [(H * (dn + r), h)]
            return q + [(rk + r, h), (H * (dn + dv), rk), (h, H * dv)]
        d, K = self.head_dim, self.num_kv_heads
        return [(H * d, h), (K * d, h), (K * d, h), (h, H * d)]

    def _attention_extra_params(self) -> int:
        """Biases, q/k norms, sinks and (MLA) latent norms of one attention layer."""
        if self.is_mla:
            return self.q_lora_rank + self.kv_lora_rank
        h, H, K, d = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        norm = {"head": 2 * d, "full": (H + K) * d, "none": 0}[self.qk_norm]
        return (H + 2 * K) * d * self.qkv_bias + h * self.o_bias + norm + H * self.attention_sinks

    def _attention_params(self) -> int:
        return sum(o * i for o, i in self._attention_matrices()) + self._attention_extra_params()

    def _attention_bytes(self) -> int:
        q = self.quant_scope == "linears"
        return (sum(self._matrix_bytes(o, i, q) for o, i in self._attention_matrices())
                + self._attention_extra_params() * self.dtype_bytes)

    def _mlp_bytes(self, width: int) -> int:
        """A dense MLP or shared expert(s) of one width: gate and up [width, h], down [h, width]."""
        q, h = self.quant_scope == "linears", self.hidden_size
        return 2 * self._matrix_bytes(width, h, q) + self._matrix_bytes(h, width, q)

    def _moe_nonrouted_params(self) -> int:
        h, E = self.hidden_size, self.num_experts
        return E * h + E * self.router_bias + 3 * h * self._shared_width() + h * self.shared_expert_gate

    def _moe_nonrouted_bytes(self) -> int:
        h, E, b = self.hidden_size, self.num_experts, self.dtype_bytes
        gate = (E * h + E * self.router_bias + h * self.shared_expert_gate) * b
        return gate + self._mlp_bytes(self._shared_width())

    @property
    def non_expert_params(self) -> int:
        h = self.hidden_size
        per_layer = self._attention_params() + 2 * h
        dense = 3 * h * self.intermediate_size * self.first_k_dense_replace
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + dense + self.num_moe_layers * self._moe_nonrouted_params() + embed + h

    @property
    def non_expert_bytes(self) -> int:
        if self.quant_scope != "linears":
            return self.non_expert_params * self.dtype_bytes
        h, b = self.hidden_size, self.dtype_bytes
        per_layer = self._attention_bytes() + 2 * h * b
        dense = self._mlp_bytes(self.intermediate_size) * self.first_k_dense_replace
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2) * b
        return self.num_layers * per_layer + dense + self.num_moe_layers * self._moe_nonrouted_bytes() + embed + h * b

    @property
    def total_params(self) -> int:
        return self.non_expert_params + self.num_moe_layers * self.num_experts * self.expert_params

    @property
    def active_params(self) -> int:
        return self.non_expert_params + self.num_moe_layers * self.top_k * self.expert_params

    @property
    def active_params_without_embedding(self) -> int:
        """Active parameters less the input embedding table (a lookup, not a matmul), as DeepSeek, gpt-oss and
        LLaDA-MoE count their published active sizes; with tied embeddings lm_head still uses the table."""
        return self.active_params - (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size)

    # ---- per-operator costs (n tokens, c context keys) ----------------------------------------------
    def _effective_context(self, c: np.ndarray) -> np.ndarray:
        """Keys attended per layer, averaged over the layers (sliding-window layers see at most the window)."""
        if not (self.sliding_window and self.sliding_window_layers):
            return c
        s, L = self.sliding_window_layers, self.num_layers
        return (s * np.minimum(c, self.sliding_window) + (L - s) * c) / L

    def attention_cost(self, n: Any, c: Any, seqs: Any = 1) -> OpCost:
        """n tokens in ``seqs`` sequences, each token over at most c keys of its own sequence: FLOPs per token
        over c keys; the key/value bytes read once per sequence (a batched decode step reads seqs caches)."""
        n = np.asarray(n, dtype=np.float64)
        seqs = np.asarray(seqs, dtype=np.float64)
        c = self._effective_context(np.asarray(c, dtype=np.float64))
        h, H, b = self.hidden_size, self.num_heads, self.dtype_bytes
        if self.is_mla:
            rq, rk, r = self.q_lora_rank, self.kv_lora_rank, self.qk_rope_head_dim
            dn, dv = self.qk_nope_head_dim, self.v_head_dim
            q = h * rq + rq * H * (dn + r) if rq else h * H * (dn + r)
            flops = (2 * n * (q + h * (rk + r) + H * dn * rk + H * rk * dv + H * dv * h)
                     + 2 * n * c * H * (rk + r) + 2 * n * c * H * rk)
            return OpCost(flops, self._attention_bytes() + b * (2 * n * h + seqs * c * (rk + r)))
        d, K = self.head_dim, self.num_kv_heads
        flops = 2 * n * h * (H + 2 * K) * d + 4 * n * c * H * d + 2 * n * H * d * h
        byts = self._attention_bytes() + b * (2 * n * h + 2 * seqs * c * K * d)
        return OpCost(flops, byts)

    def router_cost(self, n: Any) -> OpCost:
        n = np.asarray(n, dtype=np.float64)
        E, h = self.num_experts, self.hidden_size
        return OpCost(2 * n * h * E, self.dtype_bytes * E * h + 4 * n * E)

    def shared_expert_cost(self, n: Any) -> OpCost:
        n = np.asarray(n, dtype=np.float64)
        h, W, S, b = self.hidden_size, self._shared_width(), self.num_shared_experts, self.dtype_bytes
        gate = self.shared_expert_gate * h
        return OpCost(6 * n * h * W + 2 * n * gate,
                      (self._mlp_bytes(W) + b * gate + b * 2 * n * h) * (S > 0))

    def dense_mlp_cost(self, n: Any) -> OpCost:
        n = np.asarray(n, dtype=np.float64)
        h, I, b = self.hidden_size, self.intermediate_size, self.dtype_bytes
        return OpCost(6 * n * h * I, self._mlp_bytes(I) + b * 2 * n * h)

    def expert_cost(self, n: Any) -> OpCost:
        """One routed expert applied to n tokens (n = 0 costs nothing: the expert is not run)."""
        n = np.asarray(n, dtype=np.float64)
        h, i, b = self.hidden_size, self.moe_intermediate_size, self.dtype_bytes
        return OpCost(6 * n * h * i, np.where(n > 0, self.expert_bytes + b * 2 * n * h, 0.0))

    def lm_head_cost(self, n: Any) -> OpCost:
        n = np.asarray(n, dtype=np.float64)
        h, V, b = self.hidden_size, self.vocab_size, self.dtype_bytes
        return OpCost(2 * n * h * V, b * (V * h + n * h) + 4 * n * V)

    def summary(self) -> dict[str, Any]:
        gib = 2**30
        return {
            "name": self.name, "config_hash": self.config_hash, "moe_layers": self.num_moe_layers,
            "experts_per_layer": self.num_experts, "top_k": self.top_k,
            "expert_mib": self.expert_bytes / 2**20, "routed_expert_gib": self.routed_expert_bytes / gib,
            "non_expert_gib": self.non_expert_bytes / gib, "total_params_b": self.total_params / 1e9,
            "active_params_b": self.active_params / 1e9,
        }
