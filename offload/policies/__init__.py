"""Placement/refresh policies, shared by the simulator and the runtime (import without simpy or plotly).

``make_policy(name, **params)`` builds one by name; ``POLICIES`` lists the names.
"""
from __future__ import annotations

from typing import Any

from offload.errors import TideError
from offload.policies.base import KEEP, LayerDecision, LayerView, Policy, PolicyContext, Prefetch, StepInfo
from offload.policies.baselines import AllGpu, CpuRoute, FetchLru, Static
from offload.policies.tide import Tide
from offload.policies.oracle import Oracle
from offload.policies.tide_opt import TideOpt
from offload.policies.riptide import Riptide
from offload.policies.spec import format_policy, parse_policy

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (AllGpu, CpuRoute, Static, FetchLru, Tide)}
POLICIES.update({cls.name: cls for cls in (TideOpt, Oracle)})
POLICIES[Riptide.name] = Riptide
# the designs refreshing is measured against: TIDE's two ("CPU routing", "full swap") and the fixed placement of
# the busiest experts a user would try first
BASELINES = ("cpu-route", "static", "fetch-lru")
TAU_POLICIES = tuple(n for n, cls in POLICIES.items() if "tau" in cls.Params.sweepable())  # studies sweep their tau
RUNNABLE = tuple(n for n, cls in POLICIES.items() if cls.causal)  # what hardware can execute (not the oracle)


def policy_from_text(text: str) -> Policy:
    """A policy from the CLI syntax ``name`` or ``name(k=v, ...)`` (``offload.policies.spec``)."""
    name, params = parse_policy(text)
    return make_policy(name, **params)


def make_policy(name: str, **params: Any) -> Policy:
    if name not in POLICIES:
        raise TideError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")
    return POLICIES[name](**params)  # its Params check the values (one-line TideError)


__all__ = ["KEEP", "LayerDecision", "LayerView", "Policy", "PolicyContext", "Prefetch", "StepInfo", "POLICIES",
           "TAU_POLICIES", "BASELINES", "RUNNABLE", "make_policy", "policy_from_text", "parse_policy", "format_policy", "AllGpu", "CpuRoute", "FetchLru", "Static", "Tide", "TideOpt", "Oracle"]
