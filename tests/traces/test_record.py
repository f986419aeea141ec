"""python -m traces.record on tiny random transformers models (built from shrunken preset configs: nothing is
downloaded): the recorded routing equals a recomputation from the model's own router logits, and the simulator
replays the trace."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ImportError)
pytest.importorskip("transformers", exc_type=ImportError)  # absent on the GPU machine

from offload.errors import TideError  # noqa: E402
from offload.model_spec import ModelSpec  # noqa: E402
from offload.trace import KIND_DECODE, KIND_PREFILL  # noqa: E402
from offload.trace_check import validate_trace  # noqa: E402
from offload.trace_io import read_trace  # noqa: E402
from traces.record import (build_random_model, config_dict, find_routers, main, record_generate,  # noqa: E402
                           select_experts, tiny_config)

PROMPT = [5, 17, 33, 9, 101, 64, 7, 250]
NEW = 8


@pytest.fixture(scope="module", params=["mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3"])
def recorded(request):
    model = build_random_model(tiny_config(request.param, layers=2), seed=1)
    trace, new = record_generate(model, PROMPT, NEW, ignore_eos=True, name=request.param)
    return request.param, model, trace, new


def _recount(model, spec, trace, new):
    """counts from one full forward over every forwarded token with output_router_logits, top-k selected as the
    family does (select_experts), in the trace's step layout."""
    full = torch.tensor([PROMPT + new[:-1]])
    with torch.no_grad():
        out = model(full, output_router_logits=True)
    routers = find_routers(model, spec)
    ids = np.stack([select_experts(lg, spec, routers[m]).numpy() for m, lg in enumerate(out.router_logits)], axis=1)
    S, L, E = trace.counts.shape
    step = np.concatenate([np.zeros(len(PROMPT), dtype=np.int64), np.arange(1, S)])
    flat = (step[:, None, None] * L + np.arange(L)[None, :, None]) * E + ids
    return np.bincount(flat.ravel(), minlength=S * L * E).reshape(S, L, E)


def test_trace_shape_and_rows(recorded):
    name, model, trace, new = recorded
    spec = ModelSpec.from_config(config_dict(model.config))
    validate_trace(trace, spec)
    assert len(new) == NEW and trace.num_steps == NEW  # N new tokens take N forward calls
    assert trace.kind.tolist() == [KIND_PREFILL] + [KIND_DECODE] * (NEW - 1)
    assert trace.tokens_forwarded.tolist() == [len(PROMPT)] + [1] * (NEW - 1)
    assert trace.context_tokens.tolist() == [len(PROMPT) + j for j in range(NEW)]
    g = trace.header["generation"]
    assert (g["mode"], g["block_length"], g["gen_length"], g["prompt_length"]) == ("autoregressive", 1, NEW - 1, 8)
    assert trace.header["origin"]["kind"] == "recorded" and trace.header["model"]["config_hash"] == spec.config_hash


def test_counts_equal_a_recomputation_from_router_logits(recorded):
    name, model, trace, new = recorded
    spec = ModelSpec.from_config(config_dict(model.config))
    assert np.array_equal(trace.counts, _recount(model, spec, trace, new))


def test_simulator_replays_the_recording(recorded):
    pytest.importorskip("simpy")
    from offload.cost import RooflineCostModel
    from offload.hardware import HardwareProfile
    from offload.policies import make_policy
    from sim.engine import simulate

    name, model, trace, new = recorded
    spec = ModelSpec.from_config(config_dict(model.config), name=name)
    cost = RooflineCostModel(spec, HardwareProfile.load("h100-pcie5"))
    r = simulate(trace, make_policy("cpu-route"), cost, budget=max(spec.top_k, spec.num_experts // 4))
    assert r.counters.gpu_assignments + r.counters.cpu_assignments == int(trace.counts.sum())
    assert r.generated_tokens == NEW - 1


def test_cli_writes_a_trace(tmp_path, capsys):
    out = tmp_path / "t.npz"
    with pytest.raises(SystemExit) as e:
        from offload.errors import run_cli
        run_cli(main, ["--random-from", "olmoe-1b-7b", "--prompt-ids", "3,4,5", "--max-new-tokens", "4",
                       "--ignore-eos", "--out", str(out)])
    assert e.value.code == 0, capsys.readouterr().err
    tr = read_trace(out)
    assert tr.num_steps == 4 and tr.num_experts == 64 and "wrote" in capsys.readouterr().out
    # the random model's config beside it: the spec it gives is the one the trace was recorded for
    from offload.model_spec import ModelSpec
    from offload.trace_check import check_model_match

    spec = ModelSpec.load(tmp_path / "t.config.json")
    assert spec.config_hash == tr.header["model"]["config_hash"]
    check_model_match(tr, spec)


def _cli_error(argv, capsys):
    from offload.errors import run_cli
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "t.npz")
    assert "does not exist" in _cli_error([str(tmp_path / "nope"), "--prompt-ids", "1", "--out", out], capsys)
    d = tmp_path / "llada2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llada2_moe"}))
    assert "runtime.generate --trace-out" in _cli_error([str(d), "--prompt-ids", "1", "--out", out], capsys)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "unsupported model type 'llama'" in _cli_error([str(d), "--prompt-ids", "1", "--out", out], capsys)
    assert "runtime.generate" in _cli_error(["--random-from", "llada2.0-mini", "--prompt-ids", "1", "--out", out],
                                            capsys)


def test_no_router_found_is_a_tide_error():
    spec = ModelSpec.load("mixtral-8x7b")
    with pytest.raises(TideError, match="no MoE layers found"):
        find_routers(torch.nn.Sequential(torch.nn.Linear(4, 4)), spec)


def test_cli_records_a_saved_model_directory(tmp_path, capsys):
    model = build_random_model(tiny_config("qwen1.5-moe-a2.7b", layers=2), seed=3)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    model.save_pretrained(tmp_path / "m")
    want, _ = record_generate(model, [3, 4, 5], 4, ignore_eos=True)
    from offload.errors import run_cli
    out = tmp_path / "t.npz"
    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(tmp_path / "m"), "--prompt-ids", "3,4,5", "--max-new-tokens", "4", "--ignore-eos",
                       "--out", str(out)])
    assert e.value.code == 0, capsys.readouterr().err
    got = read_trace(out)
    assert np.array_equal(got.counts, want.counts) and got.header["model"]["config_hash"] == \
        want.header["model"]["config_hash"]
    err = _cli_error([str(tmp_path / "m"), "--prompt", "hello", "--out", str(out)], capsys)
    assert "needs a tokenizer" in err
