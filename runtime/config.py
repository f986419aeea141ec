"""What the runtime needs beyond the shared :class:`~offload.model_spec.ModelSpec`: the numerical constants of the
LLaDA2-MoE forward and generation, read from the same config.json as the reference reads them (TIDE's released
configuration_llada2_moe.py and modeling_llada2_moe.py; ../shared/reference/TIDE.md, "Generation semantics").

  rotary: the first rotary_dim = int(head_dim x partial_rotary_factor) dimensions of q and k, base rope_theta
          (the reference derives it from the factor and ignores a "rotary_dim" key)
  router: sigmoid scores in float32, expert bias for selection (always: the reference has no switch for it),
          group-limited top-k, weights normalised to sum 1 when top-k > 1 (the reference ignores
          norm_topk_prob) and scaled by routed_scaling_factor
  tokens: mask_token_id 156895, eos_token_id 156892 unless config.json says otherwise
  positions: max_position_embeddings (16384, the reference configuration's default, when missing) bounds the
          prompt plus the generated blocks (runtime.diffusion.check_positions)

A key missing from config.json takes the reference configuration's default (DEFAULTS), not the published
checkpoints' value: rope_theta 10000, rms_norm_eps 1e-5, routed_scaling_factor 2.5, partial_rotary_factor 0.5.

:meth:`RuntimeConfig.check_memory` refuses, before anything is allocated, weights that would not fit the host's
available memory (or the GPU's free memory): a config.json with a billion experts ends in one line, not in a
failed allocation of hundreds of GiB.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offload.errors import TideError
from offload.model_spec import ModelSpec

MASK_TOKEN_ID = 156895
EOS_TOKEN_ID = 156892
# the reference configuration's defaults (configuration_llada2_moe.py: LLaDA2MoeConfig.__init__)
DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-5, "routed_scaling_factor": 2.5, "partial_rotary_factor": 0.5}
MAX_POSITIONS = 16384  # the reference configuration's max_position_embeddings when config.json has none


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
    max_positions: int = MAX_POSITIONS  # config.json's max_position_embeddings: prompt + generated blocks at most

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "RuntimeConfig":
        if spec.model_type != "llada2_moe":  # the simulator takes other MoE families; this runtime runs LLaDA2
            raise TideError(f"the runtime runs LLaDA2-MoE (model_type llada2_moe); {spec.name} is "
                            f"{spec.model_type}: simulate it with sim.explore instead")
        c = {**DEFAULTS, **{k: v for k, v in spec.raw_config.items() if v is not None}}
        rotary = int(spec.head_dim * float(c["partial_rotary_factor"]))
        if rotary % 2 or rotary > spec.head_dim or rotary < 0:
            raise TideError(f"config.json: rotary dimension {rotary} must be even and at most head_dim {spec.head_dim}")
        if c.get("score_function", "sigmoid") != "sigmoid":
            raise TideError(f"config.json: score_function {c.get('score_function')!r} is not supported (sigmoid only)")
        eos = _int(c, "eos_token_id", EOS_TOKEN_ID)
        cfg = cls(spec=spec, rope_theta=float(c["rope_theta"]), rotary_dim=rotary,
                  rms_norm_eps=float(c["rms_norm_eps"]), routed_scaling_factor=float(c["routed_scaling_factor"]),
                  norm_topk_prob=spec.top_k > 1, use_expert_bias=True,
                  mask_token_id=_int(c, "mask_token_id", MASK_TOKEN_ID), eos_token_id=eos,
                  pad_token_id=_int(c, "pad_token_id", eos),
                  max_positions=_int(c, "max_position_embeddings", MAX_POSITIONS))
        if cfg.max_positions < 1:
            raise TideError(f"config.json: max_position_embeddings must be >= 1, got {cfg.max_positions}")
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
            if not spec.first_k_dense_replace < num_layers <= spec.num_layers:
                raise TideError(f"--num-layers must be in [{spec.first_k_dense_replace + 1}, {spec.num_layers}] "
                                f"for {spec.name} (more than its dense layers, at most its {spec.num_layers} "
                                f"layers), got {num_layers}")
            spec = ModelSpec.from_config({**spec.raw_config, "num_hidden_layers": int(num_layers)},
                                         name=f"{spec.name}-{num_layers}L")
        return cls.from_spec(spec)

    def weight_bytes(self, dtype_bytes: int) -> tuple[int, int]:
        """(routed experts, every other weight) in bytes, ``dtype_bytes`` per value: what loading or building the
        model allocates (the experts in host stacks, the rest on the model's device)."""
        s = self.spec
        return s.num_moe_layers * s.num_experts * s.expert_params * dtype_bytes, s.non_expert_params * dtype_bytes

    def check_memory(self, dtype_bytes: int, dtype_name: str, on_gpu: bool, gpu_free_bytes: int | None = None,
                     host_free_bytes: int | None = -1) -> None:
        """One-line TideError when the weights would not fit: the routed experts (and, on the CPU, every other
        weight) against the host's available memory (``available_host_bytes`` unless given; None: unknown, not
        checked), the other weights against ``gpu_free_bytes`` on a GPU. Call it before allocating any."""
        experts, other = self.weight_bytes(dtype_bytes)
        host = available_host_bytes() if host_free_bytes == -1 else host_free_bytes
        need = experts + (0 if on_gpu else other)
        s, gib = self.spec, 2**30
        if host is not None and need > host:
            raise TideError(
                f"{s.name} in {dtype_name} needs {need / gib:.1f} GiB of host memory for its weights (routed experts "
                f"{experts / gib:.1f} GiB: {s.num_moe_layers} MoE layers x {s.num_experts} experts x "
                f"{s.expert_params * dtype_bytes / 2**20:.2f} MiB" + ("" if on_gpu else f"; other weights "
                f"{other / gib:.1f} GiB") + f"), more than the {host / gib:.1f} GiB available: use fewer layers "
                f"(--num-layers), a smaller dtype or a machine with more memory")
        if on_gpu and gpu_free_bytes is not None and other > gpu_free_bytes:
            raise TideError(f"{s.name} in {dtype_name}: its weights other than the routed experts take "
                            f"{other / gib:.1f} GiB, more than the {gpu_free_bytes / gib:.1f} GiB free on the GPU")


def available_host_bytes() -> int | None:
    """Memory this process may still take: /proc/meminfo's MemAvailable, capped by a cgroup v2 limit (a
    container's) less what the cgroup already holds; None where neither can be read (not Linux)."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def _int(c: Any, key: str, default: int) -> int:
    v = c.get(key, default)
    if isinstance(v, list):  # some configs list several EOS ids; the first is the one generation stops on
        v = v[0] if v else default
    if isinstance(v, bool) or not isinstance(v, int):
        raise TideError(f"config.json: {key} must be an integer, got {v!r}")
    return v
