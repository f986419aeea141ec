"""The LLaDA2-MoE router: sigmoid scores, bias-corrected group-limited top-k selection, normalised weights.

For T tokens x [T, h], router weight W [E, h] and expert bias b [E] (all arithmetic in float32):

  logits  = x W^T                                   [T, E]
  s       = sigmoid(logits)                         [T, E]   unbiased scores, used for the weights
  s'      = s + b                                   [T, E]   biased scores, used only for selection
  groups: the E experts split into G = n_group contiguous groups of E/G (expert e is in group e // (E/G));
  group score g_j = sum of the 2 largest s' in group j; keep the topk_group groups of largest g_j;
  selection: the k = num_experts_per_tok largest s' among the experts of the kept groups
  weights  w = s[selected]; w /= sum(w) when k > 1 (norm_topk_prob, set as the reference does); w *= routed_scaling_factor

With n_group <= 1 (or topk_group >= n_group) the group limit keeps everything and this is plain top-k.

Ties: both selections use a stable descending sort, so equal scores are broken towards the lower index
(lower group, lower expert) on every device. topk_ids are ordered by descending biased score; the order
matters only for bitwise reproducibility of the weighted sum, not for its value.
"""
from __future__ import annotations

import torch

from runtime.config import RuntimeConfig
from offload.errors import TideError

# Group score = sum of this many best biased scores per group (DeepSeek-V3 style, as in LLaDA2.0).
_GROUP_SCORE_TOP = 2
# Guards the division when norm_topk_prob is set; sigmoid scores are > 0, so it only matters for underflow.
_NORM_EPS = 1e-20


def _stable_topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries along the last dim, ties to the lower index (device-independent)."""
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]


def route(hidden: torch.Tensor, weight: torch.Tensor, expert_bias: torch.Tensor | None,
          cfg: RuntimeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Route ``hidden`` [T, h]; returns (topk_ids int64 [T, k], topk_weights float32 [T, k]).

    ``expert_bias`` may be None (no bias); its dtype is the model's (bf16 rounds it, as in the reference).
    """
    spec = cfg.spec
    E, k = spec.num_experts, spec.top_k
    if hidden.dim() != 2 or tuple(weight.shape) != (E, hidden.shape[-1]):
        raise TideError(f"route: expected hidden [T, h] and weight [{E}, h], "
                        f"got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    logits = hidden.float() @ weight.float().T
    scores = torch.sigmoid(logits)
    biased = scores + expert_bias.float() if (expert_bias is not None and cfg.use_expert_bias) else scores

    G, keep = spec.n_group, spec.topk_group
    if G > 1 and keep < G:
        per_group = E // G
        if k > keep * per_group:
            raise TideError(f"route: top-{k} cannot be taken from {keep} groups of {per_group} experts")
        T = hidden.shape[0]
        grouped = biased.view(T, G, per_group)
        top = min(_GROUP_SCORE_TOP, per_group)
        group_scores = torch.sort(grouped, dim=-1, descending=True).values[..., :top].sum(-1)   # [T, G]
        kept = _stable_topk_indices(group_scores, keep)                                           # [T, keep]
        group_mask = torch.zeros(T, G, dtype=torch.bool, device=hidden.device).scatter_(1, kept, True)
        # -inf, not 0: biased scores can be negative, and a masked expert must never be selected.
        selectable = biased.masked_fill(~group_mask.repeat_interleave(per_group, dim=1), float("-inf"))
    else:
        selectable = biased

    topk_ids = _stable_topk_indices(selectable, k)
    topk_weights = scores.gather(1, topk_ids)
    if cfg.norm_topk_prob:
        topk_weights = topk_weights / (topk_weights.sum(-1, keepdim=True) + _NORM_EPS)
    topk_weights = topk_weights * cfg.routed_scaling_factor
    return topk_ids, topk_weights
