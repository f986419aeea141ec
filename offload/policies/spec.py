"""The one policy syntax of every CLI: ``name`` or ``name(k=v, ...)``, the same text a policy's label prints.

  tide(tau=4)    static(profile_steps=2)    riptide(prefetch=false, drift=none, tau=2)    all-gpu

Values: integers, decimals (``0.5``, ``1e-3``), ``true``/``false``, ``none``, and bare words (strings). The
policy's parameter dataclass (``offload.policies.params``) then checks names and values, so a typo is a
one-line error naming the parameters the policy has.
"""
from __future__ import annotations

import re
from typing import Any

from offload.errors import TideError

_SPEC = re.compile(r"^\s*([a-z][a-z0-9-]*)\s*(?:\((.*)\))?\s*$", re.IGNORECASE | re.DOTALL)
_PAIR = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*=\s*([^=]+?)\s*$", re.IGNORECASE)
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def parse_policy(text: str) -> tuple[str, dict[str, Any]]:
    """``"tide(tau=4)"`` -> ``("tide", {"tau": 4})``; a one-line TideError for text that is not a policy spec."""
    m = _SPEC.match(text)
    if not m:
        raise TideError(f"bad policy {text!r}: expected name or name(key=value, ...), e.g. tide(tau=4)")
    name, body = m.group(1).lower(), m.group(2)
    params: dict[str, Any] = {}
    for item in (body or "").split(","):
        if not item.strip():
            if body is not None and body.strip() and not item.strip():
                raise TideError(f"bad policy {text!r}: empty parameter")
            continue
        pm = _PAIR.match(item)
        if not pm:
            raise TideError(f"bad policy {text!r}: expected key=value, got {item.strip()!r}")
        key = pm.group(1)
        if key in params:
            raise TideError(f"bad policy {text!r}: {key} given twice")
        params[key] = parse_value(pm.group(2))
    return name, params


def format_policy(name: str, params: dict[str, Any]) -> str:
    """The inverse of :func:`parse_policy` (what ``Policy.label`` prints)."""
    def show(v: Any) -> str:
        return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return name + ("(" + ", ".join(f"{k}={show(v)}" for k, v in params.items()) + ")" if params else "")
