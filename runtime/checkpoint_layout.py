"""The Hugging Face checkpoint layout of LLaDA2-MoE: tensor names, their shapes, and which stay float32.

Non-expert tensors carry the module's own parameter names (``model.layers.3.attention.query_key_value.weight``
...), so their shapes are read off :class:`runtime.model.LLaDA2MoE` itself. Routed experts are one tensor per
(decoder layer, expert, projection): ``model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj.weight`` in
nn.Linear layout [out, in] (y = x W^T): gate and up [i, h], down [h, i], with h = hidden_size and
i = moe_intermediate_size (elements).
"""
from __future__ import annotations

import re

from runtime.config import RuntimeConfig
from runtime.model import LLaDA2MoE

EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")
_EXPERT_RE = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


def expert_param_name(layer: int, expert: int, proj: str) -> str:
    """Checkpoint name of one routed expert's projection; ``layer`` is the decoder layer index."""
    return f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"


def parse_expert_name(name: str) -> tuple[int, int, str] | None:
    """(decoder layer, expert, proj) for a routed-expert tensor name, else None."""
    m = _EXPERT_RE.match(name)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None


def layer_of(name: str) -> int | None:
    """Decoder layer index a tensor name belongs to (None for embeddings, final norm, lm_head)."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def expert_proj_shape(cfg: RuntimeConfig, proj: str) -> tuple[int, int]:
    """[out, in] of one routed expert's ``proj`` (elements)."""
    h, i = cfg.spec.hidden_size, cfg.spec.moe_intermediate_size
    return (h, i) if proj == "down_proj" else (i, h)


def non_expert_shapes(cfg: RuntimeConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every non-expert tensor, read off the module itself (built on the meta device)."""
    return {n: tuple(t.shape) for n, t in LLaDA2MoE(cfg, device="meta").state_dict().items()}


def checkpoint_shapes(cfg: RuntimeConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a checkpoint (non-expert, then routed experts by layer/expert/proj)."""
    shapes = non_expert_shapes(cfg)
    spec = cfg.spec
    for layer in range(spec.first_k_dense_replace, spec.num_layers):
        for e in range(spec.num_experts):
            for proj in EXPERT_PROJS:
                shapes[expert_param_name(layer, e, proj)] = expert_proj_shape(cfg, proj)
    return shapes


def is_expert_bias(name: str) -> bool:
    """The router's expert bias: held in the model dtype like every tensor, as the reference holds it (its
    buffer follows the model's dtype, so in bf16 the bias is rounded to bf16 and then added to float32 scores)."""
    return name.endswith("mlp.gate.expert_bias")
