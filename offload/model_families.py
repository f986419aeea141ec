"""Readers of a Hugging Face ``config.json``, one per MoE family: each turns its family's keys into the fields of
:class:`offload.model_spec.ModelSpec` (a plain dict, so this module does not import model_spec).

What each family's config says, and how it maps (h hidden_size, E routed experts, i routed expert width):

  llada2_moe   num_experts, moe_intermediate_size, num_shared_experts (width i each), first_k_dense_replace,
               fused QKV with per-head q/k RMSNorm, router bias; read exactly as before the other families came.
  llada_moe    LLaDA-MoE: num_experts, expert_intermediate_size, dense_intermediate_size, moe_layer_freq (a 0/1
               list per layer), optional shared_expert_intermediate_size, per-head q/k norm (qk_layernorm).
  mixtral      num_local_experts, intermediate_size (the expert width; no dense layer), no bias, no q/k norm.
  qwen2_moe    num_experts, moe_intermediate_size, one shared expert of shared_expert_intermediate_size with a
               sigmoid gate (h weights), q/k/v biases; dense layers (width intermediate_size) where
               mlp_only_layers lists them or (l + 1) % decoder_sparse_step != 0.
  qwen3_moe    as qwen2_moe's layer rule, no shared expert, no bias, per-head q/k RMSNorm, explicit head_dim.
  olmoe        num_experts, intermediate_size (the expert width), q/k RMSNorm over all heads (H d and K d).
  deepseek_v2  n_routed_experts, n_shared_experts (width i each), moe_intermediate_size; MoE where
  deepseek_v3  l >= first_k_dense_replace and l % moe_layer_freq == 0; MLA attention (q_lora_rank, kv_lora_rank,
               qk_nope_head_dim, qk_rope_head_dim, v_head_dim); v3 (topk_method noaux_tc) has a router bias.
               The multi-token-prediction module (num_nextn_predict_layers) is not counted: it is not part of
               the model's forward, and DeepSeek publishes it apart (V3: 671B main model + 14B MTP).
  gpt_oss      num_local_experts, experts_per_token / num_experts_per_tok, intermediate_size (expert width),
               biases in q/k/v/o and in the expert projections (2 i + h per expert), a router bias, one
               attention sink per head, layer_types alternating sliding (sliding_window keys) and full attention.

Quantised weights (``quantization_config``): ``mxfp4`` stores the routed experts as 4-bit values with one 8-bit
scale per 32 (the rest stays in the dtype, as gpt-oss's modules_to_not_convert says); ``fp8`` stores every
decoder-layer linear weight but the router in one byte with a float32 scale per block (weight_block_size, or one
per matrix without it), as the DeepSeek-V3 and Qwen3-FP8 checkpoints do. Embeddings, lm_head and norms stay in
the dtype.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from offload.errors import TideError

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "bf16": 2, "fp16": 2, "fp32": 4}
_REQUIRED = object()
# LLaDA2's shape fields, in the order its config hash has always used (do not reorder: traces carry the hash)
LLADA2_SHAPE_FIELDS = (
    "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers", "first_k_dense_replace",
    "num_experts", "num_experts_per_tok", "num_shared_experts", "num_attention_heads", "num_key_value_heads",
    "head_dim", "vocab_size", "n_group", "topk_group",
)


def _dtype_bytes(config: Mapping[str, Any]) -> int:
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    if dtype not in DTYPE_BYTES:
        raise TideError(f"config.json: unsupported dtype {dtype!r}")
    return DTYPE_BYTES[dtype]


def _read_ints(config: Mapping[str, Any], fields: Mapping[str, Any], positive: tuple[str, ...]) -> dict[str, int]:
    """The integer fields (a default of _REQUIRED makes one mandatory; None in the config means the default)."""
    missing = [f for f, d in fields.items() if d is _REQUIRED and config.get(f) is None]
    if missing:
        raise TideError(f"config.json lacks field(s): {', '.join(missing)}")
    vals: dict[str, int] = {}
    for f, d in fields.items():
        v = config.get(f)
        v = d if v is None else v
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise TideError(f"config.json field {f} must be a non-negative integer, got {v!r}")
        vals[f] = v
    for f in positive:
        if vals[f] == 0:
            raise TideError(f"config.json field {f} must be positive")
    return vals


def _check_common(top_k: int, experts: int, experts_key: str, heads: int, kv_heads: int, moe_layers: int) -> None:
    if top_k > experts:
        raise TideError(f"config.json: the experts per token ({top_k}) exceed {experts_key} ({experts})")
    if heads % kv_heads:
        raise TideError("config.json: num_attention_heads is not a multiple of num_key_value_heads")
    if moe_layers == 0:
        raise TideError("config.json: the layer pattern leaves no MoE layer")


def _layers(moe: list[bool]) -> dict[str, Any]:
    """first_k_dense_replace = the number of dense layers; moe_layer_ids only when they are not the first ones."""
    dense = moe.count(False)
    prefix = all(not m for m in moe[:dense]) and all(moe[dense:])
    return {"num_layers": len(moe), "first_k_dense_replace": dense,
            "moe_layer_ids": None if prefix else tuple(l for l, m in enumerate(moe) if m)}


def _quant(config: Mapping[str, Any]) -> dict[str, Any]:
    qc = config.get("quantization_config")
    if qc is None:
        return {}
    if not isinstance(qc, Mapping):
        raise TideError("config.json: quantization_config must be an object")
    method = qc.get("quant_method")
    if method == "mxfp4":
        return {"weight_format": "mxfp4", "quant_scope": "experts"}
    if method == "fp8":
        block = qc.get("weight_block_size")
        if block is None:
            block = (0, 0)  # one scale per matrix
        elif (not isinstance(block, (list, tuple)) or len(block) != 2
              or any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in block)):
            raise TideError(f"config.json: quantization_config.weight_block_size must be two positive integers, got {block!r}")
        return {"weight_format": "fp8", "quant_scope": "linears", "quant_block": tuple(block)}
    raise TideError(f"config.json: unsupported quantization_config quant_method {method!r} (supported: fp8, mxfp4)")


def _base(config: Mapping[str, Any], v: Mapping[str, int], **extra: Any) -> dict[str, Any]:
    """Fields every family shares (attention as grouped-query unless extra says otherwise)."""
    out = {"hidden_size": v["hidden_size"], "num_heads": v["num_attention_heads"],
           "num_kv_heads": v["num_key_value_heads"], "vocab_size": v["vocab_size"], "n_group": 0, "topk_group": 0,
           "dtype_bytes": _dtype_bytes(config), "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
           "model_type": str(config["model_type"]), **_quant(config)}
    out.update(extra)
    return out


# ---- LLaDA2 (unchanged checks and messages: its tests and traces predate the other families) -------------------
def read_llada2(config: Mapping[str, Any]) -> dict[str, Any]:
    missing = [f for f in LLADA2_SHAPE_FIELDS if f not in config and f != "head_dim"]
    if missing:
        raise TideError(f"config.json lacks field(s): {', '.join(missing)}")
    vals: dict[str, int] = {}
    for f in LLADA2_SHAPE_FIELDS:
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
    return dict(
        hidden_size=vals["hidden_size"], intermediate_size=vals["intermediate_size"],
        moe_intermediate_size=vals["moe_intermediate_size"], num_layers=vals["num_hidden_layers"],
        first_k_dense_replace=vals["first_k_dense_replace"], num_experts=vals["num_experts"],
        top_k=vals["num_experts_per_tok"], num_shared_experts=vals["num_shared_experts"],
        num_heads=vals["num_attention_heads"], num_kv_heads=vals["num_key_value_heads"], head_dim=vals["head_dim"],
        vocab_size=vals["vocab_size"], n_group=vals["n_group"], topk_group=vals["topk_group"],
        dtype_bytes=_dtype_bytes(config), tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


# ---- the other families ------------------------------------------------------------------------------------
_ATTN = {"hidden_size": _REQUIRED, "num_hidden_layers": _REQUIRED, "num_attention_heads": _REQUIRED,
         "vocab_size": _REQUIRED}
_POS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _gqa(config: Mapping[str, Any], extra: Mapping[str, Any], positive: tuple[str, ...]) -> dict[str, int]:
    """Ints of a grouped-query-attention family; num_key_value_heads defaults to the heads, head_dim to h / H."""
    v = _read_ints(config, {**_ATTN, "num_key_value_heads": 0, "head_dim": 0, **extra}, _POS + positive)
    v["num_key_value_heads"] = v["num_key_value_heads"] or v["num_attention_heads"]
    v["head_dim"] = v["head_dim"] or v["hidden_size"] // v["num_attention_heads"]
    if v["head_dim"] == 0:
        raise TideError("config.json field head_dim must be positive")
    return v


def read_mixtral(config: Mapping[str, Any]) -> dict[str, Any]:
    v = _gqa(config, {"num_local_experts": _REQUIRED, "num_experts_per_tok": _REQUIRED, "intermediate_size": _REQUIRED,
                      "sliding_window": 0}, ("num_local_experts", "num_experts_per_tok", "intermediate_size"))
    L = v["num_hidden_layers"]
    _check_common(v["num_experts_per_tok"], v["num_local_experts"], "num_local_experts",
                  v["num_attention_heads"], v["num_key_value_heads"], L)
    # Mistral's sliding window (null in Mixtral-8x7B) applies to every layer
    return _base(config, v, intermediate_size=0, moe_intermediate_size=v["intermediate_size"], **_layers([True] * L),
                 num_experts=v["num_local_experts"], top_k=v["num_experts_per_tok"], num_shared_experts=0,
                 head_dim=v["head_dim"], router_bias=False, qk_norm="none",
                 sliding_window=v["sliding_window"], sliding_window_layers=L if v["sliding_window"] else 0)


def _qwen_layers(config: Mapping[str, Any], L: int, step: int) -> list[bool]:
    only = config.get("mlp_only_layers") or []
    if not isinstance(only, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in only):
        raise TideError(f"config.json field mlp_only_layers must be a list of layer indices, got {only!r}")
    return [l not in only and (l + 1) % step == 0 for l in range(L)]


def _read_qwen(config: Mapping[str, Any], shared: bool) -> dict[str, Any]:
    extra = {"num_experts": _REQUIRED, "num_experts_per_tok": _REQUIRED, "moe_intermediate_size": _REQUIRED,
             "intermediate_size": 0, "decoder_sparse_step": 1}
    if shared:
        extra["shared_expert_intermediate_size"] = 0
    v = _gqa(config, extra, ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step"))
    moe = _qwen_layers(config, v["num_hidden_layers"], v["decoder_sparse_step"])
    _check_common(v["num_experts_per_tok"], v["num_experts"], "num_experts",
                  v["num_attention_heads"], v["num_key_value_heads"], moe.count(True))
    if not all(moe) and v["intermediate_size"] == 0:
        raise TideError("config.json: dense layers need a positive intermediate_size")
    width = v.get("shared_expert_intermediate_size", 0)
    return _base(config, v, intermediate_size=v["intermediate_size"], moe_intermediate_size=v["moe_intermediate_size"],
                 **_layers(moe), num_experts=v["num_experts"], top_k=v["num_experts_per_tok"],
                 num_shared_experts=1 if width else 0, shared_expert_intermediate_size=width,
                 shared_expert_gate=bool(width), head_dim=v["head_dim"], router_bias=False,
                 # Qwen2-MoE's q/k/v (not o) always carry a bias; Qwen3-MoE's q/k/v/o follow attention_bias, and it
                 # adds per-head q/k norms
                 qkv_bias=True if shared else bool(config.get("attention_bias", False)),
                 o_bias=False if shared else bool(config.get("attention_bias", False)),
                 qk_norm="none" if shared else "head")


def read_qwen2_moe(config: Mapping[str, Any]) -> dict[str, Any]:
    return _read_qwen(config, shared=True)


def read_qwen3_moe(config: Mapping[str, Any]) -> dict[str, Any]:
    return _read_qwen(config, shared=False)


def read_olmoe(config: Mapping[str, Any]) -> dict[str, Any]:
    v = _gqa(config, {"num_experts": _REQUIRED, "num_experts_per_tok": _REQUIRED, "intermediate_size": _REQUIRED},
             ("num_experts", "num_experts_per_tok", "intermediate_size"))
    L = v["num_hidden_layers"]
    _check_common(v["num_experts_per_tok"], v["num_experts"], "num_experts",
                  v["num_attention_heads"], v["num_key_value_heads"], L)
    return _base(config, v, intermediate_size=0, moe_intermediate_size=v["intermediate_size"], **_layers([True] * L),
                 num_experts=v["num_experts"], top_k=v["num_experts_per_tok"], num_shared_experts=0,
                 head_dim=v["head_dim"], router_bias=False, qkv_bias=bool(config.get("attention_bias", False)),
                 o_bias=bool(config.get("attention_bias", False)), qk_norm="full")


def read_llada_moe(config: Mapping[str, Any]) -> dict[str, Any]:
    v = _gqa(config, {"num_experts": _REQUIRED, "num_experts_per_tok": _REQUIRED, "expert_intermediate_size": _REQUIRED,
                      "dense_intermediate_size": 0, "shared_expert_intermediate_size": 0},
             ("num_experts", "num_experts_per_tok", "expert_intermediate_size"))
    L = v["num_hidden_layers"]
    freq = config.get("moe_layer_freq")
    if freq is None:
        freq = [1] * L  # the config class's default: every layer MoE
    if not isinstance(freq, list) or len(freq) != L or any(f not in (0, 1) or isinstance(f, float) for f in freq):
        raise TideError(f"config.json field moe_layer_freq must list 0 or 1 for each of the {L} layers")
    moe = [bool(f) for f in freq]
    _check_common(v["num_experts_per_tok"], v["num_experts"], "num_experts",
                  v["num_attention_heads"], v["num_key_value_heads"], moe.count(True))
    if not all(moe) and v["dense_intermediate_size"] == 0:
        raise TideError("config.json: dense layers need a positive dense_intermediate_size")
    width = v["shared_expert_intermediate_size"]
    bias = bool(config.get("attention_bias", False))
    return _base(config, v, intermediate_size=v["dense_intermediate_size"],
                 moe_intermediate_size=v["expert_intermediate_size"], **_layers(moe), num_experts=v["num_experts"],
                 top_k=v["num_experts_per_tok"], num_shared_experts=1 if width else 0,
                 shared_expert_intermediate_size=width, head_dim=v["head_dim"],
                 # its attention_bias goes to q/k/v only (o_proj has none)
                 router_bias=bool(config.get("moe_router_enable_expert_bias", False)), qkv_bias=bias, o_bias=False,
                 qk_norm="head" if config.get("qk_layernorm", True) else "none")


def read_deepseek(config: Mapping[str, Any]) -> dict[str, Any]:
    mla = {"kv_lora_rank": _REQUIRED, "qk_nope_head_dim": _REQUIRED, "qk_rope_head_dim": _REQUIRED,
           "v_head_dim": _REQUIRED, "q_lora_rank": 0}
    v = _read_ints(config, {**_ATTN, "num_key_value_heads": 0, "n_routed_experts": _REQUIRED,
                            "num_experts_per_tok": _REQUIRED, "moe_intermediate_size": _REQUIRED,
                            "intermediate_size": 0, "n_shared_experts": 0, "first_k_dense_replace": 0,
                            "moe_layer_freq": 1, "n_group": 0, "topk_group": 0, **mla},
                   _POS + ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "moe_layer_freq",
                           "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    L, E, H = v["num_hidden_layers"], v["n_routed_experts"], v["num_attention_heads"]
    moe = [l >= v["first_k_dense_replace"] and l % v["moe_layer_freq"] == 0 for l in range(L)]
    # MLA has no key/value head groups: every query head reads the one latent, so K = H for the shape fields
    _check_common(v["num_experts_per_tok"], E, "n_routed_experts", H, H, moe.count(True))
    if not all(moe) and v["intermediate_size"] == 0:
        raise TideError("config.json: dense layers need a positive intermediate_size")
    if v["n_group"] and (E % v["n_group"] or v["topk_group"] > v["n_group"]):
        raise TideError("config.json: n_group must divide n_routed_experts and topk_group must not exceed n_group")
    return _base(config, {**v, "num_key_value_heads": H}, intermediate_size=v["intermediate_size"],
                 moe_intermediate_size=v["moe_intermediate_size"], **_layers(moe), num_experts=E,
                 top_k=v["num_experts_per_tok"], num_shared_experts=v["n_shared_experts"],
                 head_dim=v["qk_nope_head_dim"] + v["qk_rope_head_dim"], n_group=v["n_group"],
                 topk_group=v["topk_group"], router_bias=config.get("topk_method") == "noaux_tc", qk_norm="none",
                 **{k: v[k] for k in mla})


def read_gpt_oss(config: Mapping[str, Any]) -> dict[str, Any]:
    k1, k2 = config.get("num_experts_per_tok"), config.get("experts_per_token")
    if k1 is not None and k2 is not None and k1 != k2:
        raise TideError(f"config.json: num_experts_per_tok ({k1!r}) and experts_per_token ({k2!r}) disagree")
    v = _gqa({**config, "num_experts_per_tok": k1 if k1 is not None else k2},
             {"num_local_experts": _REQUIRED, "num_experts_per_tok": _REQUIRED, "intermediate_size": _REQUIRED,
              "sliding_window": 0}, ("num_local_experts", "num_experts_per_tok", "intermediate_size"))
    L = v["num_hidden_layers"]
    _check_common(v["num_experts_per_tok"], v["num_local_experts"], "num_local_experts",
                  v["num_attention_heads"], v["num_key_value_heads"], L)
    types = config.get("layer_types")
    if types is None:
        types = ["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(L)]  # the config's default
    if not isinstance(types, list) or len(types) != L or any(t not in ("sliding_attention", "full_attention") for t in types):
        raise TideError(f"config.json field layer_types must name sliding_attention or full_attention for each of the {L} layers")
    sliding = types.count("sliding_attention") if v["sliding_window"] else 0
    return _base(config, v, intermediate_size=0, moe_intermediate_size=v["intermediate_size"], **_layers([True] * L),
                 num_experts=v["num_local_experts"], top_k=v["num_experts_per_tok"], num_shared_experts=0,
                 head_dim=v["head_dim"], router_bias=True, qkv_bias=bool(config.get("attention_bias", True)),
                 o_bias=bool(config.get("attention_bias", True)), qk_norm="none", attention_sinks=True,
                 expert_bias=True, sliding_window=v["sliding_window"], sliding_window_layers=sliding)


READERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "llada2_moe": read_llada2, "llada_moe": read_llada_moe, "mixtral": read_mixtral, "qwen2_moe": read_qwen2_moe,
    "qwen3_moe": read_qwen3_moe, "deepseek_v2": read_deepseek, "deepseek_v3": read_deepseek, "olmoe": read_olmoe,
    "gpt_oss": read_gpt_oss,
}
