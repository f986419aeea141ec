"""Placement/refresh policies, shared by the simulator and the runtime (import without simpy or plotly).

``make_policy(name, **params)`` builds one by name; ``POLICIES`` lists the names. Each class declares its
``role`` (``ROLES``): the tables, the recommendation and "the best baseline" read roles, never names, so a new
policy is its module, its entry here and its test.
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

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (AllGpu, CpuRoute, Static, FetchLru, Tide, TideOpt,
                                                                Oracle, Riptide)}
# what a policy is in a comparison: the ceiling (all-gpu: every expert on the GPU, outside any budget), a baseline
# TIDE compares against (cpu-route, fetch-lru), a fixed placement refreshing must beat (static), a refresh every tau
# steps, tau swept (tide), the reproduced paper's method (tide-opt), ours (riptide; a new policy's default),
# clairvoyant (oracle: reads future routing, simulated, never recommended)
ROLES = ("ceiling", "baseline", "fixed", "refresh", "paper", "ours", "clairvoyant")
BASELINE_ROLES = ("baseline", "fixed")  # the designs refreshing is measured against: "the best baseline"


def role_of(name: str) -> str:
    """A registered policy's role ("" for a name not registered, e.g. a row of an older run)."""
    return POLICIES[name].role if name in POLICIES else ""


def with_role(*roles: str) -> tuple[str, ...]:
    """The registered policies of these roles, in registry order (at call time: a policy registered later counts)."""
    return tuple(n for n, cls in POLICIES.items() if cls.role in roles)


def sweeps_tau(name: str) -> bool:
    """Whether a study sweeps this policy's refresh interval tau (a ``tau`` knob it does not choose itself)."""
    return name in POLICIES and "tau" in POLICIES[name].Params.sweepable()


BASELINES = with_role(*BASELINE_ROLES)
TAU_POLICIES = tuple(n for n in POLICIES if sweeps_tau(n))
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
           "ROLES", "BASELINE_ROLES", "TAU_POLICIES", "BASELINES", "RUNNABLE", "role_of", "with_role", "sweeps_tau",
           "make_policy", "policy_from_text", "parse_policy", "format_policy", "AllGpu", "CpuRoute", "FetchLru",
           "Static", "Tide", "TideOpt", "Oracle"]
