"""Studies as data: a JSON file names the grid (models x hardware x GPU budgets x modes x generation lengths),
the policies and their tau sweep, the executors, the traces (synthetic draws or recorded files), the memory
reserve, which points are the paper's setting and the table that sums it up. ``sim/studies/<name>.json`` are the
packaged ones (``--study paper``); ``--study FILE.json`` runs any. ``sim.explore``'s plain run is the one-point
study its options describe.

Fields (required: name, models, hardware, policies, tau, one of fractions and budgets, and for synthetic traces
modes, gen_length and seed), each of the type given; a field of another type is a one-line error naming it:
  name, description      strings (name non-empty)
  models, hardware       non-empty lists of strings: presets or files, as ``--model`` / ``--hardware`` take them
  fractions              a list of numbers: GPU budgets as fractions of the routed experts per layer, each in (0, 1],
                         capped by what fits the GPU
  budgets                a list of integers >= 1: GPU budgets in experts per layer, as given (instead of fractions)
  modes                  a list of prefix-recompute, block-cache and/or autoregressive (token-by-token decode)
  policies               a list of policy specs (``name`` or ``name(k=v, ...)``); a tide without tau is swept over
                         ``tau``
  tau                    a list of refresh intervals (integers >= 1)
  gen_length             an integer or a list of them (>= 1): synthetic traces' generated tokens, an axis
  seed                   an integer >= 0: the synthetic traces' seed
  seeds                  an integer in [1, MAX_SEEDS = 64]: synthetic trace draws per model and mode (default 1;
                         ``sim.spread``): draw 0 the calibrated generator with ``seed``, draw i seed + i with its
                         uncertain parameters drawn
  traces                 a list of trace files replayed instead of synthetic draws (one model; the traces give the
                         modes, and those of one mode are its draws): no modes, gen_length, seed(s) or generator
                         figures then
  executors              a list of executor profiles (names or files; default ["tide-moe"]): the grid runs under
                         each, in a run directory of its own when there are several
  reserve_gib            a number >= 0: GiB of GPU memory kept free
  paper_setting          an object {"mode": M, "budget": {model: B or "largest"}}: the grid points marked as the
                         paper's
  table                  the study's table (``TABLES``: "headline", the default, or "paper-repro")
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from offload.errors import TideError
from offload.executor import DEFAULT_EXECUTOR, ExecutorProfile
from offload.policies import policy_from_text
from offload.trace import MODES

PACKAGED = ("paper", "paper-repro")
# trace draws per model and mode, here and in sim.explore's --seeds: each draw is a full replay of the grid (the
# default explore on llada2.0-mini: 64 draws x 2 modes x ~20 policy runs is an hour or more on 2 cores), and a
# median over more than 64 draws moves by less than the spread between the draws themselves
MAX_SEEDS = 64
_REQUIRED = ("name", "models", "hardware", "policies", "tau")
_SYNTHETIC = ("modes", "gen_length", "seed", "seeds")
_OPTIONAL = ("description", "reserve_gib", "paper_setting", "fractions", "budgets", "traces", "executors", "table")


@dataclass(frozen=True)
class TableSpec:
    """A study's table: a row per grid point (and executor), columns by role (``offload.policies.ROLES``), never
    by policy name, so a new policy appears in every table through its class's role. The defaults: the headline."""

    lead: tuple[str, ...] = ("setting", "B", "mode")  # or "executor"; "setting" is the model and hardware
    # "base": the best baseline with its name; a role: a column per registered policy of it; "bound"; "ratios";
    # "recommended": the policy recommended and its share of draws won
    columns: tuple[str, ...] = ("base", "fixed", "refresh", "paper", "ours", "clairvoyant", "bound", "ceiling",
                                "ratios", "recommended")
    # (role, denominator[, note]): per policy of the role, its tokens/s over the denominator's within a draw;
    # a denominator is "base", "bound" or a role (its best policy)
    ratios: tuple[tuple[str, ...], ...] = (("paper", "base"), ("paper", "fixed"), ("ours", "paper"), ("ours", "bound"))
    page_title: str = "Study: {study}"  # --publish's page: its title and note take {study}, {executor}, {runs}
    note: str = ("Study `{study}` under the `{executor}` executor, {runs} simulated runs: every figure the median and "
                 "[min-max] over trace draws, ratios taken within a draw; `bound` is `sim.bound`'s (no policy within "
                 "the budget is faster; all-gpu holds every expert, outside the budget).")
    title: str = ""  # printed above the table
    stat: str = "median"  # over trace draws: "median", or "mean" (TIDE's evaluation averages per prompt)
    paper_only: bool = False  # only the paper's setting (else every point, the paper's starred)
    taus: bool = True  # the refresh intervals chosen, beside a refreshing policy's figure
    ranges_from: int = 2  # draws from which a figure shows its [min-max]
    labels: Mapping[str, str] = field(default_factory=dict)  # a denominator role's label when it has several


TABLES = {
    "headline": TableSpec(),
    "paper-repro": TableSpec(
        lead=("executor", "setting", "B"), columns=("baseline", "fixed", "refresh", "paper", "ours", "bound", "ratios"),
        ratios=(("refresh", "baseline"), ("paper", "baseline", "TIDE: 1.4x mini, 1.5x flash"), ("paper", "fixed"),
                ("ours", "paper"), ("ours", "bound")),
        title="TIDE's setting, mean over prompts [min-max]", stat="mean", paper_only=True, taus=False,
        ranges_from=1, labels={"baseline": "paper's base"}, page_title="TIDE's own setting under both executors",
        note="TIDE's setting (the `paper-repro` study: LLaDA2.0-mini at B = 128 and LLaDA2.0-flash at B = 96, "
             "prefix recompute, gen_length 1024 with EOS stop, synthetic prompts) under both executors. Tokens/s "
             "as TIDE's evaluation reports it: the mean over prompts of each prompt's tokens/s, [min-max] over "
             "prompts; \"paper's base\" is the better of `cpu-route` and `fetch-lru`. Roofline presets, not "
             "calibrated on real hardware."),
}


@dataclass(frozen=True)
class StudySpec:
    name: str
    models: tuple[str, ...]
    hardware: tuple[str, ...]
    fractions: tuple[float, ...]
    modes: tuple[str, ...]
    policies: tuple[str, ...]
    tau: tuple[int, ...]
    gen_length: tuple[int, ...]
    seed: int
    seeds: int = 1
    reserve_gib: float = 4.0
    description: str = ""
    paper_setting: Mapping[str, Any] = field(default_factory=dict)
    budgets: tuple[int, ...] = ()
    traces: tuple[str, ...] = ()
    executors: tuple[str, ...] = (DEFAULT_EXECUTOR,)
    # sim.explore's options for its synthetic traces (None: the generator's default); not in a study file
    block_length: int | None = None
    prompt_length: int | None = None
    tokens_per_forward: float | None = None
    eos_stop: bool | None = None  # False: every draw generates all its tokens (sim_speed.py)
    table: str = "headline"

    def to_dict(self) -> dict[str, Any]:
        """The study as a study file holds it (and explore's generator options when set); empty fields left out."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d = {k: list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v for k, v in d.items()}
        d["gen_length"] = d["gen_length"][0] if len(self.gen_length) == 1 else d["gen_length"]
        drop = _SYNTHETIC if self.traces else ()
        return {k: v for k, v in d.items() if k not in drop and v is not None and v != [] and v != ""}


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


def _check_fields(d: Mapping[str, Any], origin: str) -> None:
    """Missing, unknown and exclusive fields: the first problem as a one-line TideError."""
    traces = "traces" in d
    missing = [k for k in _REQUIRED + (() if traces else ("modes", "gen_length", "seed")) if k not in d]
    missing += [] if ("fractions" in d) != ("budgets" in d) else ["fractions (or budgets, not both)"]
    unknown = sorted(set(d) - set(_REQUIRED + _SYNTHETIC + _OPTIONAL))
    if missing or unknown:
        raise TideError(f"study {origin}: " + (f"missing {', '.join(missing)}" if missing else
                                               f"unknown field {', '.join(unknown)}"))
    clash = [k for k in _SYNTHETIC if k in d] if traces else []
    if clash or (traces and len(_list(d, "models", str, origin)) != 1):
        raise TideError(f"study {origin}: a study of trace files has one model and takes the rest from the traces"
                        + (f": {', '.join(clash)} would be ignored" if clash else ""))


def study_from_dict(d: Any, origin: str) -> StudySpec:
    """A checked StudySpec; one-line TideError naming the first problem."""
    if not isinstance(d, dict):
        raise TideError(f"study {origin}: expected a JSON object")
    _check_fields(d, origin)
    if not isinstance(d["name"], str) or not d["name"]:
        raise TideError(f"study {origin}: name must be a non-empty string, got {_show(d['name'])}")
    if not isinstance(d.get("description", ""), str):
        raise TideError(f"study {origin}: description must be a string, got {_show(d['description'])}")
    fractions = tuple(float(f) for f in _list(d, "fractions", (int, float), origin)) if "fractions" in d else ()
    if not all(0.0 < f <= 1.0 for f in fractions):
        raise TideError(f"study {origin}: fractions must be in (0, 1]")
    budgets = _list(d, "budgets", int, origin) if "budgets" in d else ()
    modes = _list(d, "modes", str, origin) if "modes" in d else ()
    if not set(modes) <= set(MODES):
        raise TideError(f"study {origin}: modes must be among {', '.join(MODES)}")
    tau = _list(d, "tau", int, origin)
    if min(tau) < 1 or min(budgets, default=1) < 1:
        raise TideError(f"study {origin}: {'tau' if min(tau) < 1 else 'budgets'} must be >= 1")
    for text in _list(d, "policies", str, origin):
        policy_from_text(text)
    gen = d.get("gen_length", 1024)
    gen = [gen] if _is_int(gen) else gen  # one, or an axis of them
    for key, low, values in (("gen_length", 1, gen), ("seed", 0, [d.get("seed", 0)])):
        if not isinstance(values, list) or not values or not all(_is_int(v) and v >= low for v in values):
            raise TideError(f"study {origin}: {key} must be an integer >= {low}"
                            f"{' (or a list of them)' if low else ''}, got {_show(d[key])}")
    seeds = d.get("seeds", 1)
    check_seeds(seeds, f"study {origin}: seeds")
    reserve = d.get("reserve_gib", 4.0)
    if not isinstance(reserve, (int, float)) or isinstance(reserve, bool) or not 0 <= reserve < float("inf"):
        raise TideError(f"study {origin}: reserve_gib must be a number >= 0, got {_show(reserve)}")
    executors = _list(d, "executors", str, origin) if "executors" in d else (DEFAULT_EXECUTOR,)
    for x in executors:
        ExecutorProfile.load(x)  # an unknown name or a bad file ends here, in one line
    if d.get("table", "headline") not in TABLES:
        raise TideError(f"study {origin}: table must be one of {', '.join(TABLES)}, got {_show(d['table'])}")
    models = _list(d, "models", str, origin)
    return StudySpec(name=d["name"], models=models, hardware=_list(d, "hardware", str, origin), fractions=fractions,
                     budgets=budgets, modes=modes, policies=tuple(d["policies"]), tau=tau, gen_length=tuple(gen),
                     seeds=seeds, reserve_gib=float(reserve), description=d.get("description", ""),
                     traces=_list(d, "traces", str, origin) if "traces" in d else (), executors=executors,
                     table=d.get("table", "headline"), seed=d.get("seed", 0),
                     paper_setting=_paper_setting(d.get("paper_setting"), modes or MODES, models, origin))


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
