"""The LLaDA2-MoE model spec, read from a Hugging Face ``config.json``; sizes, FLOPs and bytes per operator.

Notation (all from config.json): h = hidden_size, I = intermediate_size (dense MLP), i = moe_intermediate_size,
E = num_experts, k = num_experts_per_tok, S = num_shared_experts, H = num_attention_heads,
K = num_key_value_heads, d = head_dim, V = vocab_size, L = num_hidden_layers, Ld = first_k_dense_replace,
b = bytes per parameter (2 for bfloat16).

Parameters:
  routed expert          3 h i                      (gate, up: [i, h]; down: [h, i])
  attention / layer      (H + 2K) d h + H d h + 2 d (fused QKV, dense out, per-head q/k RMSNorm)
  dense MLP / layer      3 h I                      (layers < Ld)
  MoE non-routed / layer E h + E + 3 h (i S)        (router weight, expert bias, shared expert)
  embeddings, lm_head    V h each (untied);  norms  h per RMSNorm (2 per layer + final)

Costs of one operator for n tokens (FLOPs count a multiply-add as 2; bytes are weights read once plus the
activations read and written, at b bytes each):
  attention (n tokens attending to c keys):  2 n h (H+2K) d + 4 n c H d + 2 n H d h   FLOPs
                                             weights + b (2 n h + 2 c K d)            bytes  (x, out, K and V)
  routed expert with n tokens:               6 n h i FLOPs;   b (3 h i + 2 n h) bytes
  router (float32 logits):                   2 n h E FLOPs;   b E h + 4 n E bytes
  shared expert:                             6 n h i S FLOPs; b (3 h i S + 2 n h) bytes
  dense MLP:                                 6 n h I FLOPs;   b (3 h I + 2 n h) bytes
  lm_head:                                   2 n h V FLOPs;   b (V h + n h) + 4 n V bytes (float32 logits)
Activation traffic for an expert computed on the CPU: one hidden vector (b h bytes) per token-assignment to
the CPU and one back.

All functions take numpy arrays or scalars for n and c and return arrays of the same shape.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from offload.errors import TideError

MODEL_PRESETS = {"llada2.0-mini": "llada2.0-mini.json", "llada2.0-flash": "llada2.0-flash.json",
                 "llada2-tiny": "llada2-tiny.json"}
SUPPORTED_MODEL_TYPES = ("llada2_moe",)
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "bf16": 2, "fp16": 2, "fp32": 4}
# Fields that define the shape of the network; the config hash covers exactly these.
_SHAPE_FIELDS = (
    "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers", "first_k_dense_replace",
    "num_experts", "num_experts_per_tok", "num_shared_experts", "num_attention_heads", "num_key_value_heads",
    "head_dim", "vocab_size", "n_group", "topk_group",
)


@dataclass(frozen=True)
class OpCost:
    """FLOPs and bytes moved by one operator (scalars or arrays of one shape)."""

    flops: Any
    bytes: Any

    def __add__(self, other: "OpCost") -> "OpCost":
        return OpCost(self.flops + other.flops, self.bytes + other.bytes)


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a LLaDA2-MoE network and the sizes derived from it."""

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

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str | None = None) -> "ModelSpec":
        """Build from a parsed config.json; a missing or inconsistent field raises TideError."""
        if not isinstance(config, Mapping):
            raise TideError("config.json must hold a JSON object")
        mtype = config.get("model_type")
        if mtype not in SUPPORTED_MODEL_TYPES:
            raise TideError(f"unsupported model_type {mtype!r} in config.json (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        missing = [f for f in _SHAPE_FIELDS if f not in config and f != "head_dim"]
        if missing:
            raise TideError(f"config.json lacks field(s): {', '.join(missing)}")
        vals: dict[str, int] = {}
        for f in _SHAPE_FIELDS:
            v = config.get(f)
            if f == "head_dim" and v is None:
                # default hidden_size / heads, once both are known to be integers (heads > 0 checked below)
                v = vals["hidden_size"] // vals["num_attention_heads"] if vals["num_attention_heads"] else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TideError(f"config.json field {f} must be a non-negative integer, got {v!r}")
            vals[f] = v
        for f in ("hidden_size", "num_hidden_layers", "num_experts", "num_experts_per_tok", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "vocab_size", "moe_intermediate_size"):
            if vals[f] == 0:
                raise TideError(f"config.json field {f} must be positive")
        if vals["num_experts_per_tok"] > vals["num_experts"]:
            raise TideError("config.json: num_experts_per_tok exceeds num_experts")
        if vals["first_k_dense_replace"] >= vals["num_hidden_layers"]:
            raise TideError("config.json: first_k_dense_replace leaves no MoE layer")
        if vals["num_attention_heads"] % vals["num_key_value_heads"]:
            raise TideError("config.json: num_attention_heads is not a multiple of num_key_value_heads")
        if vals["n_group"] and (vals["num_experts"] % vals["n_group"] or vals["topk_group"] > vals["n_group"]):
            raise TideError("config.json: n_group must divide num_experts and topk_group must not exceed n_group")
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
        if dtype not in _DTYPE_BYTES:
            raise TideError(f"config.json: unsupported dtype {dtype!r}")
        return cls(
            name=name or str(config.get("_name_or_path") or "llada2_moe"),
            hidden_size=vals["hidden_size"], intermediate_size=vals["intermediate_size"],
            moe_intermediate_size=vals["moe_intermediate_size"], num_layers=vals["num_hidden_layers"],
            first_k_dense_replace=vals["first_k_dense_replace"], num_experts=vals["num_experts"],
            top_k=vals["num_experts_per_tok"], num_shared_experts=vals["num_shared_experts"],
            num_heads=vals["num_attention_heads"], num_kv_heads=vals["num_key_value_heads"], head_dim=vals["head_dim"],
            vocab_size=vals["vocab_size"], n_group=vals["n_group"], topk_group=vals["topk_group"],
            dtype_bytes=_DTYPE_BYTES[dtype], tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            raw_config=dict(config),
        )

    @classmethod
    def load(cls, name_or_path: str | Path) -> "ModelSpec":
        """A preset name (``llada2.0-mini``, ``llada2.0-flash``), a config.json, or a model directory."""
        key = str(name_or_path)
        if key in MODEL_PRESETS:
            text = resources.files("offload.presets.models").joinpath(MODEL_PRESETS[key]).read_text()
            return cls.from_config(json.loads(text), name=key)
        path = Path(key)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise TideError(f"unknown model {key!r}: not a preset ({', '.join(MODEL_PRESETS)}) and no such file")
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TideError(f"malformed config.json {path}: {exc}") from None
        return cls.from_config(config, name=path.parent.name if path.name == "config.json" else path.stem)

    # ---- sizes --------------------------------------------------------------------------------------
    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_k_dense_replace

    @property
    def config_hash(self) -> str:
        """16 hex digits of sha256 over the shape fields: traces recorded on one shape replay only on it."""
        shape = {f: getattr(self, a) for f, a in zip(_SHAPE_FIELDS, (
            "hidden_size", "intermediate_size", "moe_intermediate_size", "num_layers", "first_k_dense_replace",
            "num_experts", "top_k", "num_shared_experts", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
            "n_group", "topk_group"))}
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def expert_bytes(self) -> int:
        return self.expert_params * self.dtype_bytes

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

    def _attention_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        return (self.num_heads + 2 * self.num_kv_heads) * d * h + self.num_heads * d * h + 2 * d

    def _moe_nonrouted_params(self) -> int:
        h = self.hidden_size
        return self.num_experts * h + self.num_experts + 3 * h * self.moe_intermediate_size * self.num_shared_experts

    @property
    def non_expert_params(self) -> int:
        h = self.hidden_size
        per_layer = self._attention_params() + 2 * h
        dense = 3 * h * self.intermediate_size * self.first_k_dense_replace
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + dense + self.num_moe_layers * self._moe_nonrouted_params() + embed + h

    @property
    def non_expert_bytes(self) -> int:
        return self.non_expert_params * self.dtype_bytes

    @property
    def total_params(self) -> int:
        return self.non_expert_params + self.num_moe_layers * self.num_experts * self.expert_params

    @property
    def active_params(self) -> int:
        return self.non_expert_params + self.num_moe_layers * self.top_k * self.expert_params

    # ---- per-operator costs (n tokens, c context keys) ----------------------------------------------
    def attention_cost(self, n: Any, c: Any) -> OpCost:
        n = np.asarray(n, dtype=np.float64)
        c = np.asarray(c, dtype=np.float64)
        h, d, H, K, b = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, self.dtype_bytes
        flops = 2 * n * h * (H + 2 * K) * d + 4 * n * c * H * d + 2 * n * H * d * h
        byts = self._attention_params() * b + b * (2 * n * h + 2 * c * K * d)
        return OpCost(flops, byts)

    def router_cost(self, n: Any) -> OpCost:
        n = np.asarray(n, dtype=np.float64)
        E, h = self.num_experts, self.hidden_size
        return OpCost(2 * n * h * E, self.dtype_bytes * E * h + 4 * n * E)

    def shared_expert_cost(self, n: Any) -> OpCost:
        n = np.asarray(n, dtype=np.float64)
        h, i, S, b = self.hidden_size, self.moe_intermediate_size, self.num_shared_experts, self.dtype_bytes
        return OpCost(6 * n * h * i * S, b * (3 * h * i * S + 2 * n * h) * (S > 0))

    def dense_mlp_cost(self, n: Any) -> OpCost:
        n = np.asarray(n, dtype=np.float64)
        h, I, b = self.hidden_size, self.intermediate_size, self.dtype_bytes
        return OpCost(6 * n * h * I, b * (3 * h * I + 2 * n * h))

    def expert_cost(self, n: Any) -> OpCost:
        """One routed expert applied to n tokens (n = 0 costs nothing: the expert is not run)."""
        n = np.asarray(n, dtype=np.float64)
        h, i, b = self.hidden_size, self.moe_intermediate_size, self.dtype_bytes
        return OpCost(6 * n * h * i, np.where(n > 0, b * (3 * h * i + 2 * n * h), 0.0))

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
