"""Draws of the synthetic generator's uncertain parameters (traces.synthetic_draws).

Draw 0 is the calibrated generator; draw i >= 1 has seed base.seed + i and each uncertain parameter inside its
range, deterministically from (base.seed, i). The ranges were checked by measurement (module docstring); here: the
contract, and that a drawn trace still commits the published tokens per forward and keeps tide's hit ratio band.
"""
from __future__ import annotations

import pytest

pytest.importorskip("scipy", exc_type=ImportError)  # traces.synthetic needs it; absent on the GPU machine

from dataclasses import asdict, replace

import numpy as np

from offload.errors import TideError
from offload.model_spec import ModelSpec
from traces.stats import trace_stats
from traces.synthetic import MODEL_DEFAULTS, default_config, generate
from traces.synthetic_draws import (UNCERTAIN, UNCERTAIN_BY_MODEL, UNCERTAIN_FLASH, UncertainParameter,
                                    draw_config, draw_quantiles, halton, synthetic_draw, uncertain_parameters)


@pytest.fixture(scope="module")
def mini() -> ModelSpec:
    return ModelSpec.load("llada2.0-mini")


@pytest.fixture(scope="module")
def flash() -> ModelSpec:
    return ModelSpec.load("llada2.0-flash")


def test_draw_zero_is_the_base(mini):
    base = default_config(mini, "block-cache", seed=7, gen_length=256)
    assert draw_config(base, 0, mini) is base
    assert synthetic_draw(mini, "block-cache", 7, 0, gen_length=256) == base


def test_draws_are_deterministic_and_depend_on_seed_and_index(mini):
    base = default_config(mini, seed=3)
    assert draw_config(base, 2, mini) == draw_config(base, 2, mini)
    # the drawn values depend on (base.seed, draw) only, not on the base's other fields
    assert draw_config(replace(base, gen_length=256), 2, mini) == replace(draw_config(base, 2, mini), gen_length=256)
    other = draw_config(default_config(mini, seed=4), 2, mini)
    assert {p.name: getattr(other, p.name) for p in UNCERTAIN} != {p.name: getattr(draw_config(base, 2, mini), p.name)
                                                                 for p in UNCERTAIN}


@pytest.mark.parametrize("family", ["mini", "flash"])
def test_every_drawn_value_lies_in_its_range_and_draws_differ(family, mini, flash):
    model = {"mini": mini, "flash": flash}[family]
    params = uncertain_parameters(model)
    assert params is UNCERTAIN_BY_MODEL[family] is uncertain_parameters(family)
    base = default_config(model, seed=11)
    draws = [draw_config(base, i, model) for i in range(1, 33)]
    for i, cfg in enumerate(draws, start=1):
        assert cfg.seed == base.seed + i
        for p in params:
            assert p.low <= getattr(cfg, p.name) <= p.high, (p.name, getattr(cfg, p.name))
        # everything that is not drawn is the base's
        drawn = {p.name for p in params} | {"seed"}
        assert all(getattr(cfg, k) == v for k, v in asdict(base).items() if k not in drawn)
    values = np.array([[getattr(c, p.name) for p in params] for c in draws])  # [draw, parameter]
    assert len({tuple(v) for v in values}) == len(draws) and len({c.seed for c in draws}) == len(draws)
    # space filling: 32 draws reach both ends of every range, not a clump around one value
    span = (values.max(0) - values.min(0)) / np.array([p.high - p.low for p in params])
    assert (span > 0.8).all()


def test_ranges_hold_the_calibrated_centre_and_differ_by_model(mini, flash):
    for family, model in (("mini", mini), ("flash", flash)):
        centre = default_config(model)
        for p in UNCERTAIN_BY_MODEL[family]:
            assert p.low < getattr(centre, p.name) < p.high, (family, p.name)
            assert p.calibrated_to
    assert {p.name for p in UNCERTAIN} == {p.name for p in UNCERTAIN_FLASH}
    skew = {f: next(p for p in UNCERTAIN_BY_MODEL[f] if p.name == "popularity_skew") for f in ("mini", "flash")}
    assert skew["mini"].high < MODEL_DEFAULTS["flash"]["popularity_skew"] and skew["flash"].low > 2.0


@pytest.mark.parametrize("bad", [-1, 1.0, True, "1", None])
def test_bad_draw_is_a_one_line_tide_error(mini, bad):
    with pytest.raises(TideError) as exc:
        draw_config(default_config(mini), bad, mini)
    assert "\n" not in str(exc.value) and ">= 0" in str(exc.value)


def test_bad_model_or_parameter_is_a_one_line_tide_error():
    for make in (lambda: uncertain_parameters("medium"), lambda: UncertainParameter("seed", 0, 1, "x"),
                 lambda: UncertainParameter("drift_sd", 0.6, 0.2, "x"),
                 lambda: UncertainParameter("drift_sd", 0.1, 7.0, "x"),  # outside SyntheticConfig's own range
                 lambda: halton(1, 40)):
        with pytest.raises(TideError) as exc:
            make()
        assert "\n" not in str(exc.value)


def test_synthetic_draw_keeps_what_the_caller_fixed(mini):
    cfg = synthetic_draw(mini, "prefix-recompute", 5, 3, gen_length=256, drift_sd=0.33)
    assert cfg == replace(draw_config(default_config(mini, "prefix-recompute", seed=5, gen_length=256,
                                                     drift_sd=0.33), 3, mini), drift_sd=0.33)
    assert cfg.seed == 8 and cfg.gen_length == 256 and cfg.mode == "prefix-recompute"


def test_halton_points_and_quantiles():
    # radical inverse in bases 2 and 3 without scrambling: index 5 = 101 (base 2) -> 0.101 = 5/8; 12 (base 3) -> 1/9
    assert halton(5, 2)[0] == pytest.approx(5 / 8) and halton(5, 2)[1] == pytest.approx(2 / 3 + 1 / 9)
    u = np.array([draw_quantiles(0, i, 8) for i in range(1, 65)])
    assert ((u >= 0) & (u < 1)).all()
    # the base-2 parameter's first 8 draws take one value in each eighth of the (rotated) unit interval
    first = np.sort(np.mod(u[:8, 0] - u[7, 0], 1.0))
    assert np.allclose(np.diff(first), 1 / 8, atol=1 / 16)


@pytest.mark.parametrize("draw", [1, 2])
def test_a_drawn_trace_keeps_tokens_per_forward_and_the_hit_ratio_band(mini, draw):
    """A drawn config is still calibrated: mean tokens per forward 2.55 (the commit schedule does not depend on the
    drawn parameters) and the top-half share per prefix-recompute forward (the hit ratio of a per-step refresh of
    128 of 256 experts) inside TIDE's 0.93-0.95, with a little room for a single short trace."""
    cfg = draw_config(default_config(mini, "prefix-recompute", gen_length=512, eos_stop=False), draw, mini)
    s = trace_stats(generate(mini, cfg))
    assert s["tokens_per_forward"] == pytest.approx(2.55, abs=0.2)
    assert 0.92 < s["top_half_share"] < 0.96
