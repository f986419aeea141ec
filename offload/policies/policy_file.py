"""The recommended-policy file that ``sim.explore`` writes and ``runtime.generate --policy FILE`` executes.

JSON object::

    {"format": "tide-moe-policy/1", "policy": "tide", "params": {"tau": 4},
     "budget": {"experts_per_layer": 128}, "mode": "block-cache",
     "model": "llada2.0-mini", "model_config_hash": "...", "model_source": "llada2.0-mini",
     "hardware": "H100-80GB-PCIe5", "hardware_source": "h100-pcie5",
     "predicted": {"tokens_per_s": ..., "hit_ratio": ...}, "created_by": "sim.explore ..."}

The file is the contract between the simulator and the runtime: ``runtime.generate --policy FILE`` takes the
policy with its parameters, the budget, the mode, the model (``model_source``: the preset or the absolute path
of the config the simulator priced) and the hardware profile (``hardware_source``) from it unless told
otherwise, and refuses a model whose config hash differs from ``model_config_hash``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from offload.errors import TideError
from offload.policies import Policy, make_policy

FORMAT = "tide-moe-policy/1"


@dataclass(frozen=True)
class PolicyChoice:
    policy: str
    params: dict[str, Any]
    experts_per_layer: int | None
    mode: str | None = None
    model: str = ""
    model_config_hash: str = ""
    hardware: str = ""
    predicted: dict[str, float] = field(default_factory=dict)
    created_by: str = ""
    model_source: str = ""      # what --model loads it again: a preset name or an absolute path
    hardware_source: str = ""   # likewise for --hardware

    def check_model(self, spec: Any) -> None:
        """Refuse a model other than the one the file was made for (its config hash differs)."""
        if self.model_config_hash and spec.config_hash != self.model_config_hash:
            raise TideError(f"the policy file was made for {self.model or 'another model'} (config hash "
                            f"{self.model_config_hash}), not for {spec.name} (config hash {spec.config_hash}); "
                            f"rerun sim.explore for this model")

    def build(self) -> Policy:
        return make_policy(self.policy, **self.params)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["budget"] = {"experts_per_layer": d.pop("experts_per_layer")}
        return {"format": FORMAT, **d}


def write_policy_file(path: str | Path, choice: PolicyChoice) -> Path:
    from offload.atomic_io import atomic_write_text

    atomic_write_text(path, json.dumps(choice.to_dict(), indent=2) + "\n")
    return Path(path)


def read_policy_file(path: str | Path) -> PolicyChoice:
    if Path(path).is_dir():
        raise TideError(f"policy file {path} is a directory (pass its recommended-policy.json)")
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TideError(f"policy file {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TideError(f"policy file {path}: not valid JSON ({exc})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise TideError(f"policy file {path}: format must be {FORMAT!r}")
    budget = d.get("budget") or {}
    params = d.get("params") or {}
    if not isinstance(params, dict) or not isinstance(budget, dict) or not isinstance(d.get("policy"), str):
        raise TideError(f"policy file {path}: policy must be a name, params and budget objects")
    choice = PolicyChoice(policy=d["policy"], params=params, experts_per_layer=budget.get("experts_per_layer"),
                          mode=d.get("mode"), model=str(d.get("model", "")),
                          model_config_hash=str(d.get("model_config_hash", "")), hardware=str(d.get("hardware", "")),
                          predicted=dict(d.get("predicted") or {}), created_by=str(d.get("created_by", "")),
                          model_source=str(d.get("model_source", "")), hardware_source=str(d.get("hardware_source", "")))
    if not choice.build().causal:  # unknown policy or bad parameters fail here too, with the file's name in view
        raise TideError(f"policy file {path}: {choice.policy} is clairvoyant (it reads future routing) and "
                        "cannot run on hardware")
    return choice
