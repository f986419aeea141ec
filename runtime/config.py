"""What the runtime needs beyond the shared :class:`~offload.model_spec.ModelSpec`: the numerical constants of the
LLaDA2-MoE forward and generation, read from the same config.json (defaults from the published checkpoints).

  rotary: the first rotary_dim = head_dim x partial_rotary_factor dimensions of q and k, base rope_theta
  router: sigmoid scores in float32, expert bias for selection, group-limited top-k, weights normalised to sum
          1 (norm_topk_prob) and scaled by routed_scaling_factor
  tokens: mask_token_id 156895, eos_token_id 156892 unless config.json says otherwise
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from offload.errors import TideError
from offload.model_spec import ModelSpec

MASK_TOKEN_ID = 156895
EOS_TOKEN_ID = 156892


@dataclass(frozen=True)
class RuntimeConfig:
    spec: ModelSpec
    rope_theta: float
    rotary_dim: int
    rms_norm_eps: float
    routed_scaling_factor: float
    norm_topk_prob: bool
    use_expert_bias: bool
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "RuntimeConfig":
        c = spec.raw_config
        rotary = c.get("rotary_dim")
        if rotary is None:
            rotary = int(spec.head_dim * float(c.get("partial_rotary_factor", 1.0)))
        if rotary % 2 or rotary > spec.head_dim or rotary < 0:
            raise TideError(f"config.json: rotary dimension {rotary} must be even and at most head_dim {spec.head_dim}")
        if c.get("score_function", "sigmoid") != "sigmoid":
            raise TideError(f"config.json: score_function {c.get('score_function')!r} is not supported (sigmoid only)")
        eos = _int(c, "eos_token_id", EOS_TOKEN_ID)
        cfg = cls(spec=spec, rope_theta=float(c.get("rope_theta", 600000)), rotary_dim=int(rotary),
                  rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
                  routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0)),
                  norm_topk_prob=bool(c.get("norm_topk_prob", True)),
                  use_expert_bias=bool(c.get("moe_router_enable_expert_bias", True)),
                  mask_token_id=_int(c, "mask_token_id", MASK_TOKEN_ID), eos_token_id=eos,
                  pad_token_id=_int(c, "pad_token_id", eos))
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            if not 0 <= getattr(cfg, name) < spec.vocab_size:
                raise TideError(f"config.json: {name} {getattr(cfg, name)} is outside the vocabulary of {spec.vocab_size}")
        return cfg

    @classmethod
    def load(cls, name_or_path: Any, num_layers: int | None = None) -> "RuntimeConfig":
        """A model preset, config.json or model directory; ``num_layers`` truncates the network (random-weight
        benchmarks: e.g. a LLaDA2.0-mini shape with 4 MoE layers)."""
        spec = ModelSpec.load(name_or_path)
        if num_layers is not None:
            if num_layers <= spec.first_k_dense_replace:
                raise TideError(f"--num-layers must exceed first_k_dense_replace ({spec.first_k_dense_replace})")
            spec = ModelSpec.from_config({**spec.raw_config, "num_hidden_layers": int(num_layers)},
                                         name=f"{spec.name}-{num_layers}L")
        return cls.from_spec(spec)

    def with_spec(self, spec: ModelSpec) -> "RuntimeConfig":
        return replace(self, spec=spec)


def _int(c: Any, key: str, default: int) -> int:
    v = c.get(key, default)
    if isinstance(v, list):  # some configs list several EOS ids; the first is the one generation stops on
        v = v[0] if v else default
    if isinstance(v, bool) or not isinstance(v, int):
        raise TideError(f"config.json: {key} must be an integer, got {v!r}")
    return v
