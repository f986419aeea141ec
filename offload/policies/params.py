"""Policy parameters as data: one frozen dataclass per policy, whose fields are its knobs with their defaults.

A knob is declared once (:func:`knob`: default, one-line meaning, whether studies sweep it) and checked once
(the dataclass's ``check``); the policy reads it from ``policy.p``. From the declaration follow:

  params()    the knobs that reproduce a policy: every swept knob, and the others where they differ from their
              default (labels, result rows and policy files carry exactly this)
  settings()  every knob, defaults included (ablation tables)
  sweepable() the knobs a study sweeps (``sim.explore --tau`` sweeps the policies whose ``tau`` is one)

The one policy syntax on every CLI, ``name(k=v, ...)``, is parsed by ``offload.policies.spec``.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

from offload.errors import TideError

# The refresh interval every entry point defaults to. TIDE's development runs on LLaDA2.0-mini (B = 128) lost only
# about 0.004 of GPU hit ratio refreshing every 5 steps instead of every step (../shared/reference/TIDE.md), and
# the paper's evaluation sweeps tau = 1..31; 4 keeps refreshes cheap while staying below that measured point.
DEFAULT_TAU = 4


def knob(default: Any, doc: str, sweep: bool = False) -> Any:
    """A parameter field: ``default``, what it means (``doc``), and whether studies sweep it."""
    return field(default=default, metadata={"doc": doc, "sweep": sweep})


@dataclass(frozen=True)
class PolicyParams:
    """No knobs (all-gpu, fetch-lru); the base of every policy's parameters."""

    policy: ClassVar[str] = "policy"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # numpy scalars (a sweep's values) as plain Python, for JSON and labels
            v = getattr(self, f.name)
            if hasattr(v, "item") and not isinstance(v, (bool, int, float, str)):
                object.__setattr__(self, f.name, v.item())
        try:
            self.check()
        except (TypeError, ValueError) as exc:
            raise TideError(f"bad parameters for policy {self.policy}: {exc}") from None

    def check(self) -> None:
        """Raise ValueError naming a bad value (subclasses)."""

    @classmethod
    def build(cls, policy: str, **values: Any) -> "PolicyParams":
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TideError(f"policy {policy} has no parameter {', '.join(unknown)} "
                            f"(its parameters: {', '.join(known) or 'none'})")
        return cls(**values)

    @classmethod
    def sweepable(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("sweep"))

    @classmethod
    def docs(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}

    def settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("sweep") or getattr(self, f.name) != f.default}


def check_int(name: str, v: Any, low: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


def check_bool(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false, got {v!r}")


def check_unit(name: str, v: Any, hi: float = 1.0, closed: bool = True) -> None:
    """A number in [0, hi] (or [0, hi) when not ``closed``)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0.0 <= v <= hi if closed else 0.0 <= v < hi):
        raise ValueError(f"{name} must be a number in [0, {hi:g}{']' if closed else ')'}, got {v!r}")
