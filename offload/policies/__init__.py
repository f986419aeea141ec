"""Placement/refresh policies, shared by the simulator and the runtime (import without simpy or plotly).

``make_policy(name, **params)`` builds one by name; ``POLICIES`` lists the names.
"""
from __future__ import annotations

from typing import Any

from offload.errors import TideError
from offload.policies.base import KEEP, LayerDecision, LayerView, Policy, PolicyContext, Prefetch, StepInfo
from offload.policies.baselines import AllGpu, CpuRoute, FetchLru
from offload.policies.tide import Tide
from offload.policies.oracle import Oracle
from offload.policies.tide_opt import TideOpt
from offload.policies.riptide import Riptide

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (AllGpu, CpuRoute, FetchLru, Tide)}
POLICIES.update({cls.name: cls for cls in (TideOpt, Oracle)})
POLICIES[Riptide.name] = Riptide
TAU_POLICIES = ("tide",)  # policies whose parameters include tau


def make_policy(name: str, **params: Any) -> Policy:
    if name not in POLICIES:
        raise TideError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")
    try:
        return POLICIES[name](**params)
    except TypeError as exc:
        raise TideError(f"bad parameters for policy {name}: {exc}") from None
    except ValueError as exc:
        raise TideError(str(exc)) from None


__all__ = ["KEEP", "LayerDecision", "LayerView", "Policy", "PolicyContext", "Prefetch", "StepInfo", "POLICIES",
           "TAU_POLICIES", "make_policy", "AllGpu", "CpuRoute", "FetchLru", "Tide", "TideOpt", "Oracle"]
