"""Studies as data: a JSON file names the grid (models x hardware x budget fractions x modes), the policies and
their tau sweep, the synthetic traces (gen_length, seed), the memory reserve and which points are the paper's
setting. ``sim/studies/<name>.json`` are the packaged ones (``--study paper``); ``--study FILE.json`` runs any.

Fields (all required but ``description``, ``reserve_gib`` (4 GiB), ``seeds`` (1) and ``paper_setting``):
  models, hardware       presets or files, as ``--model`` / ``--hardware`` take them
  fractions              GPU budgets as fractions of the routed experts per layer, each in (0, 1]
  modes                  prefix-recompute, block-cache and/or autoregressive (token-by-token decode)
  policies               policy specs (``name`` or ``name(k=v, ...)``); a tide without tau is swept over ``tau``
  tau                    refresh intervals (integers >= 1)
  gen_length, seed       synthetic traces: generated tokens, seed
  seeds                  synthetic trace draws per model and mode (default 1; ``sim.spread``): draw 0 the
                         calibrated generator with ``seed``, draw i seed + i with its uncertain parameters drawn
  paper_setting          {"mode": M, "budget": {model: B or "largest"}}: the grid points marked as the paper's
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from offload.errors import TideError
from offload.policies import policy_from_text
from offload.trace import MODES

PACKAGED = ("paper", "paper-repro")
MAX_SEEDS = 1000  # draws per model and mode: each is a full replay of the grid
_REQUIRED = ("name", "models", "hardware", "fractions", "modes", "policies", "tau", "gen_length", "seed")


@dataclass(frozen=True)
class StudySpec:
    name: str
    models: tuple[str, ...]
    hardware: tuple[str, ...]
    fractions: tuple[float, ...]
    modes: tuple[str, ...]
    policies: tuple[str, ...]
    tau: tuple[int, ...]
    gen_length: int
    seed: int
    seeds: int = 1
    reserve_gib: float = 4.0
    description: str = ""
    paper_setting: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "models": list(self.models),
                "hardware": list(self.hardware), "fractions": list(self.fractions), "modes": list(self.modes),
                "reserve_gib": self.reserve_gib, "policies": list(self.policies), "tau": list(self.tau),
                "gen_length": self.gen_length, "seed": self.seed, "seeds": self.seeds,
                "paper_setting": dict(self.paper_setting)}


def _list(d: Mapping[str, Any], key: str, kind: type, origin: str) -> tuple:
    v = d[key]
    if not isinstance(v, list) or not v or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v):
        raise TideError(f"study {origin}: {key} must be a non-empty list of {kind.__name__}s")
    return tuple(v)


def study_from_dict(d: Any, origin: str) -> StudySpec:
    """A checked StudySpec; one-line TideError naming the first problem."""
    if not isinstance(d, dict):
        raise TideError(f"study {origin}: expected a JSON object")
    missing = [k for k in _REQUIRED if k not in d]
    unknown = sorted(set(d) - set(_REQUIRED) - {"description", "reserve_gib", "seeds", "paper_setting"})
    if missing or unknown:
        raise TideError(f"study {origin}: " + (f"missing {', '.join(missing)}" if missing else
                                               f"unknown field {', '.join(unknown)}"))
    fractions = tuple(float(f) for f in _list(d, "fractions", (int, float), origin))
    if not all(0.0 < f <= 1.0 for f in fractions):
        raise TideError(f"study {origin}: fractions must be in (0, 1]")
    modes = _list(d, "modes", str, origin)
    if not set(modes) <= set(MODES):
        raise TideError(f"study {origin}: modes must be among {', '.join(MODES)}")
    tau = _list(d, "tau", int, origin)
    if min(tau) < 1:
        raise TideError(f"study {origin}: tau must be >= 1")
    policies = _list(d, "policies", str, origin)
    for text in policies:
        policy_from_text(text)
    for key in ("gen_length", "seed"):
        if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < (1 if key == "gen_length" else 0):
            raise TideError(f"study {origin}: {key} must be an integer >= {1 if key == 'gen_length' else 0}")
    seeds = d.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS:
        raise TideError(f"study {origin}: seeds must be an integer in [1, {MAX_SEEDS}], got {seeds!r}")
    reserve = d.get("reserve_gib", 4.0)
    if not isinstance(reserve, (int, float)) or reserve < 0:
        raise TideError(f"study {origin}: reserve_gib must be a number >= 0")
    return StudySpec(name=str(d["name"]), models=_list(d, "models", str, origin),
                     hardware=_list(d, "hardware", str, origin), fractions=fractions, modes=modes,
                     policies=policies, tau=tau, gen_length=d["gen_length"], seed=d["seed"], seeds=seeds,
                     reserve_gib=float(reserve), description=str(d.get("description", "")),
                     paper_setting=dict(d.get("paper_setting") or {}))


def load_study(name_or_path: str) -> StudySpec:
    """A packaged study by name, or a study file."""
    if name_or_path in PACKAGED:
        text = resources.files("sim.studies").joinpath(f"{name_or_path}.json").read_text()
        origin = name_or_path
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise TideError(f"unknown study {name_or_path!r}: not a packaged study ({', '.join(PACKAGED)}) "
                            "and no such file")
        text, origin = path.read_text(), str(path)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TideError(f"study {origin}: malformed JSON ({exc})") from None
    return study_from_dict(d, origin)
