"""Studies as data: a JSON file names the grid (models x hardware x budget fractions x modes), the policies and
their tau sweep, the synthetic traces (gen_length, seed), the memory reserve and which points are the paper's
setting. ``sim/studies/<name>.json`` are the packaged ones (``--study paper``); ``--study FILE.json`` runs any.

Fields (all required but ``description``, ``reserve_gib`` (4 GiB), ``seeds`` (1) and ``paper_setting``), each of
the type given; a field of another type is a one-line error naming it:
  name, description      strings (name non-empty)
  models, hardware       non-empty lists of strings: presets or files, as ``--model`` / ``--hardware`` take them
  fractions              a list of numbers: GPU budgets as fractions of the routed experts per layer, each in (0, 1]
  modes                  a list of prefix-recompute, block-cache and/or autoregressive (token-by-token decode)
  policies               a list of policy specs (``name`` or ``name(k=v, ...)``); a tide without tau is swept over
                         ``tau``
  tau                    a list of refresh intervals (integers >= 1)
  gen_length, seed       integers: synthetic traces' generated tokens (>= 1), seed (>= 0)
  seeds                  an integer in [1, MAX_SEEDS = 64]: synthetic trace draws per model and mode (default 1;
                         ``sim.spread``): draw 0 the calibrated generator with ``seed``, draw i seed + i with its
                         uncertain parameters drawn
  reserve_gib            a number >= 0: GiB of GPU memory kept free
  paper_setting          an object {"mode": M, "budget": {model: B or "largest"}}: the grid points marked as the
                         paper's
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
# trace draws per model and mode, here and in sim.explore's --seeds: each draw is a full replay of the grid (the
# default explore on llada2.0-mini: 64 draws x 2 modes x ~20 policy runs is an hour or more on 2 cores), and a
# median over more than 64 draws moves by less than the spread between the draws themselves
MAX_SEEDS = 64
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


_KIND_NAMES = {str: "strings", int: "integers", float: "numbers"}


def _list(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], origin: str) -> tuple:
    v = d[key]
    if not isinstance(v, list) or not v or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v):
        what = _KIND_NAMES[float if kind == (int, float) else kind]  # type: ignore[index]
        raise TideError(f"study {origin}: {key} must be a non-empty list of {what}, got {_show(v)}")
    return tuple(v)


def _show(v: Any) -> str:
    """A field's value for an error message: short, one line."""
    text = " ".join(json.dumps(v).split()) if isinstance(v, (list, dict, str, int, float, bool, type(None))) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _paper_setting(v: Any, modes: tuple[str, ...], models: tuple[str, ...], origin: str) -> dict[str, Any]:
    """{"mode": M, "budget": {model: B or "largest"}} (or empty / null: no point is marked)."""
    if v is None or v == {}:
        return {}
    bad = f"study {origin}: paper_setting must be an object {{\"mode\": M, \"budget\": {{model: B or \"largest\"}}}}"
    if not isinstance(v, dict) or set(v) - {"mode", "budget"}:
        raise TideError(f"{bad}, got {_show(v)}")
    if v.get("mode") not in modes:
        raise TideError(f"{bad}: its mode must be one of the study's modes ({', '.join(modes)}), got {_show(v.get('mode'))}")
    budget = v.get("budget", {})
    if not isinstance(budget, dict) or not all(
            isinstance(m, str) and (b == "largest" or (_is_int(b) and b >= 1)) for m, b in budget.items()):
        raise TideError(f"{bad}: budget maps models to experts per layer (an integer >= 1) or \"largest\", "
                        f"got {_show(budget)}")
    unknown = [m for m in budget if m not in models]
    if unknown:
        raise TideError(f"{bad}: budget names {', '.join(unknown)}, not among the study's models")
    return dict(v)


def study_from_dict(d: Any, origin: str) -> StudySpec:
    """A checked StudySpec; one-line TideError naming the first problem."""
    if not isinstance(d, dict):
        raise TideError(f"study {origin}: expected a JSON object")
    missing = [k for k in _REQUIRED if k not in d]
    unknown = sorted(set(d) - set(_REQUIRED) - {"description", "reserve_gib", "seeds", "paper_setting"})
    if missing or unknown:
        raise TideError(f"study {origin}: " + (f"missing {', '.join(missing)}" if missing else
                                               f"unknown field {', '.join(unknown)}"))
    if not isinstance(d["name"], str) or not d["name"]:
        raise TideError(f"study {origin}: name must be a non-empty string, got {_show(d['name'])}")
    if not isinstance(d.get("description", ""), str):
        raise TideError(f"study {origin}: description must be a string, got {_show(d['description'])}")
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
        if not _is_int(d[key]) or d[key] < (1 if key == "gen_length" else 0):
            raise TideError(f"study {origin}: {key} must be an integer >= {1 if key == 'gen_length' else 0}, "
                            f"got {_show(d[key])}")
    seeds = d.get("seeds", 1)
    check_seeds(seeds, f"study {origin}: seeds")
    reserve = d.get("reserve_gib", 4.0)
    if not isinstance(reserve, (int, float)) or isinstance(reserve, bool) or not 0 <= reserve < float("inf"):
        raise TideError(f"study {origin}: reserve_gib must be a number >= 0, got {_show(reserve)}")
    models = _list(d, "models", str, origin)
    return StudySpec(name=d["name"], models=models,
                     hardware=_list(d, "hardware", str, origin), fractions=fractions, modes=modes,
                     policies=policies, tau=tau, gen_length=d["gen_length"], seed=d["seed"], seeds=seeds,
                     reserve_gib=float(reserve), description=d.get("description", ""),
                     paper_setting=_paper_setting(d.get("paper_setting"), modes, models, origin))


def check_seeds(seeds: Any, what: str = "--seeds") -> None:
    """One-line TideError unless ``seeds`` (trace draws per model and mode) is an integer in [1, MAX_SEEDS]."""
    if not _is_int(seeds) or not 1 <= seeds <= MAX_SEEDS:
        raise TideError(f"{what} must be an integer in [1, {MAX_SEEDS}], got {_show(seeds)}")


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
