"""Policy parameters as data and the one policy syntax: every policy's label parses back to the same policy,
bad specs are one-line errors naming the problem, and one default tau serves every entry point."""
from __future__ import annotations

import dataclasses

import pytest

from offload.errors import TideError
from offload.policies import POLICIES, TAU_POLICIES, make_policy, parse_policy, policy_from_text
from offload.policies.params import DEFAULT_TAU
from offload.policies.spec import format_policy, parse_value

# a non-default value for every knob of every policy
NON_DEFAULT = {"static": {"profile_steps": 3}, "tide": {"tau": 7}, "tide-opt": {"per_layer": True},
               "oracle": {"discount": 0.5},
               "riptide": {"prefetch": False, "cost_aware": False, "layer_budgets": False, "balance": False,
                           "carry": False, "drift": None, "tau": 3, "cost_bound": 2.5, "link_share": 0.25,
                           "min_share": 0.75, "ema": 0.5}}


@pytest.mark.parametrize("name", list(POLICIES))
def test_label_parses_back_to_the_same_policy(name):
    for params in ({}, NON_DEFAULT.get(name, {})):
        policy = make_policy(name, **params)
        again = policy_from_text(policy.label())
        assert again.name == name and again.settings() == policy.settings()
        assert again.label() == policy.label()


def test_every_knob_is_declared_once_with_a_meaning():
    for name, cls in POLICIES.items():
        fields = {f.name for f in dataclasses.fields(cls.Params)}
        assert fields == set(NON_DEFAULT.get(name, {})), name  # the table above covers every knob
        assert all(doc for doc in cls.Params.docs().values()), name


def test_one_default_tau():
    assert make_policy("tide").p.tau == DEFAULT_TAU == make_policy("riptide", drift=None).p.tau
    assert TAU_POLICIES == ("tide",)  # the policies whose tau a study sweeps


def test_params_show_swept_knobs_and_changed_ones_only():
    assert make_policy("tide").params() == {"tau": DEFAULT_TAU}
    assert make_policy("riptide").params() == {} and make_policy("riptide", ema=0.5).params() == {"ema": 0.5}
    assert make_policy("riptide", tau=2).params() == {}  # tau only matters without drift
    assert make_policy("riptide", drift=None, tau=2).params() == {"drift": None, "tau": 2}


@pytest.mark.parametrize("text,name,params", [
    ("tide(tau=4)", "tide", {"tau": 4}), (" all-gpu ", "all-gpu", {}), ("tide()", "tide", {}),
    ("riptide(prefetch=false, drift=none, cost_bound=1e-1)", "riptide",
     {"prefetch": False, "drift": None, "cost_bound": 0.1}),
    ("static(profile_steps=2)", "static", {"profile_steps": 2}),
])
def test_parse(text, name, params):
    assert parse_policy(text) == (name, params)


@pytest.mark.parametrize("text,match", [
    ("tide(tau=4", "expected name or name"), ("tide(tau)", "expected key=value"), ("tide(tau=1, tau=2)", "twice"),
    ("tide(tua=4)", "no parameter tua"), ("tide(tau=0)", "tau must be an integer >= 1"),
    ("tide(tau=2.5)", "tau must be an integer"), ("riptide(balance=1)", "balance must be true or false"),
    ("oracle(discount=1)", r"discount must be a number in \[0, 1\)"), ("nope", "unknown policy 'nope'"),
    ("tide(tau=4,,)", "empty parameter"),
])
def test_bad_specs_are_one_line_errors(text, match):
    with pytest.raises(TideError, match=match) as exc:
        policy_from_text(text)
    assert "\n" not in str(exc.value)


def test_values_and_format():
    assert [parse_value(v) for v in ("3", "-2", "0.5", ".5", "1e3", "True", "NONE", "first-step")] == \
        [3, -2, 0.5, 0.5, 1000.0, True, None, "first-step"]
    assert format_policy("riptide", {"drift": None, "carry": False}) == "riptide(drift=none, carry=false)"


def test_numpy_values_become_plain_python():
    np = pytest.importorskip("numpy")
    p = make_policy("tide", tau=np.int64(3))
    assert type(p.p.tau) is int and p.label() == "tide(tau=3)"


def test_refresh_interval_is_what_records_show_as_tau():
    from offload.policies import make_policy

    assert make_policy("tide", tau=3).refresh_interval == 3
    assert make_policy("tide-opt").refresh_interval is None  # nothing chosen before the first block ends
    assert make_policy("riptide", drift=None, tau=6).refresh_interval == 6  # periodic refreshes
    assert make_policy("riptide").refresh_interval is None  # refreshes on drift
    assert make_policy("static").refresh_interval is None
