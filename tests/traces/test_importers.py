"""The JSONL decode-log importer and its command line, on small hand-written logs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from offload.errors import TideError, run_cli
from offload.model_spec import ModelSpec
from traces.import_jsonl import main as cli_main
from traces.importers import import_jsonl
from offload.trace_io import read_trace
from offload.trace import KIND_DECODE, KIND_PREFILL
from offload.trace_check import validate_trace

# tiny model (tests/conftest.py): 2 MoE layers, 8 experts, top-2
HAND_LOG = [
    {"type": "meta", "model_id": "hand", "top_k": 2},
    {"step": 1, "layer": 0, "experts": [3, 4]},
    {"step": 0, "layer": 1, "experts": [[0, 1], [1, 2]]},
    {"step": 0, "layer": 0, "experts": [[5, 6]]},
    {"step": 0, "layer": 0, "experts": [7, 0]},
    {"type": "route", "step": 1, "layer": 1, "experts": [4, 5]},
]


def _write(tmp_path, rows, name="log.jsonl") -> str:
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _err(excinfo, *needles):
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, TideError) and "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_hand_log_counts_and_metadata(tmp_path, tiny_model):
    path = _write(tmp_path, HAND_LOG)
    t = import_jsonl(path, tiny_model)
    validate_trace(t, tiny_model)
    want = np.zeros((2, 2, 8), dtype=np.int32)
    for e in (5, 6, 7, 0):
        want[0, 0, e] += 1
    for e in (0, 1, 1, 2):
        want[0, 1, e] += 1
    want[1, 0, [3, 4]] = 1
    want[1, 1, [4, 5]] = 1
    np.testing.assert_array_equal(t.counts, want)
    np.testing.assert_array_equal(t.tokens_forwarded, [2, 1])
    np.testing.assert_array_equal(t.context_tokens, [2, 3])
    np.testing.assert_array_equal(t.kind, [KIND_DECODE, KIND_DECODE])
    np.testing.assert_array_equal(t.block, [0, 1])
    np.testing.assert_array_equal(t.step_in_block, [0, 0])
    np.testing.assert_array_equal(t.tokens_committed, [1, 1])
    # per-token ids: tokens of a step in file order, the same position in every layer
    np.testing.assert_array_equal(t.topk_ids, [[[5, 6], [0, 1]], [[7, 0], [1, 2]], [[3, 4], [4, 5]]])
    assert t.topk_ids.dtype == np.int16
    gen = t.header["generation"]
    assert gen["mode"] == "autoregressive" and gen["block_length"] == 1
    assert gen["gen_length"] == 2 and gen["prompt_length"] == 0
    assert t.header["origin"]["kind"] == "imported" and t.header["origin"]["source"] == path
    assert t.header["model"]["config_hash"] == tiny_model.config_hash
    assert t.mode == "autoregressive" and t.generated_tokens == 2


def test_first_is_prefill(tmp_path, tiny_model):
    t = import_jsonl(_write(tmp_path, HAND_LOG), tiny_model, first_is_prefill=True)
    np.testing.assert_array_equal(t.kind, [KIND_PREFILL, KIND_DECODE])
    np.testing.assert_array_equal(t.tokens_committed, [0, 1])
    np.testing.assert_array_equal(t.block, [-1, 0])
    assert t.header["generation"]["gen_length"] == 1
    assert t.header["generation"]["prompt_length"] == 2
    np.testing.assert_array_equal(t.lm_tokens, [0, 1])


def test_layer_offset_and_no_topk(tmp_path, tiny_model):
    rows = [dict(r, layer=r["layer"] + 1) if "layer" in r else r for r in HAND_LOG]
    path = _write(tmp_path, rows)
    with pytest.raises(TideError) as ei:
        import_jsonl(path, tiny_model)
    _err(ei, "line 3", "layer 2", "outside", "2 MoE layers")
    t = import_jsonl(path, tiny_model, layer_offset=1, keep_topk=False)
    assert t.topk_ids is None
    ref = import_jsonl(_write(tmp_path, HAND_LOG, "ref.jsonl"), tiny_model)
    np.testing.assert_array_equal(t.counts, ref.counts)


def test_step_ids_need_not_be_contiguous(tmp_path, tiny_model):
    rows = [{"step": s, "layer": l, "experts": [s % 8, (s + 1) % 8]} for s in (10, 3, 7) for l in (1, 0)]
    t = import_jsonl(_write(tmp_path, rows), tiny_model)
    assert t.num_steps == 3
    assert t.counts[0, 0, 3] == 1 and t.counts[1, 0, 7] == 1 and t.counts[2, 0, 2] == 1  # steps 3, 7, 10
    assert t.header["origin"]["log_steps"] == [3, 10]


def test_blank_lines_and_other_types_skipped(tmp_path, tiny_model):
    rows = ["", '{"type": "timing", "ms": 3}', *[json.dumps(r) for r in HAND_LOG], "   "]
    t = import_jsonl(_write(tmp_path, rows), tiny_model)
    assert t.num_steps == 2


def test_random_log_matches_bruteforce(tmp_path, tiny_model):
    rng = np.random.default_rng(5)
    rows, ids_by = [], {}
    for s in range(30):
        n = int(rng.integers(1, 4))
        for l in range(2):
            toks = [rng.choice(8, 2, replace=False).tolist() for _ in range(n)]
            ids_by[s, l] = toks
            # split a step's tokens over several rows
            for j, tok in enumerate(toks):
                rows.append({"step": s, "layer": l, "experts": tok if j % 2 else [tok]})
    # rows of one (step, layer) must keep their relative order for topk_ids; shuffle across groups only
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["step"], r["layer"]), []).append(r)
    keys = list(groups)
    shuffled = [r for i in rng.permutation(len(keys)) for r in groups[keys[i]]]
    t = import_jsonl(_write(tmp_path, shuffled), tiny_model)
    want = np.zeros((30, 2, 8), dtype=np.int64)
    for (s, l), toks in ids_by.items():
        for tok in toks:
            for e in tok:
                want[s, l, e] += 1
    np.testing.assert_array_equal(t.counts, want)
    flat = np.concatenate([np.stack([np.array(ids_by[s, l]) for l in range(2)], axis=1) for s in range(30)])
    np.testing.assert_array_equal(t.topk_ids, flat)


# ---- errors ------------------------------------------------------------------------------------------------

BAD_LOGS = [
    ([HAND_LOG[1], "{not json"], ("line 2", "malformed JSON")),
    ([HAND_LOG[1], "[1, 2, 3]"], ("line 2", "expected a JSON object")),
    ([{"step": 0, "layer": 0}], ("line 1", "lacks field 'experts'")),
    ([{"layer": 0, "experts": [1, 2]}], ("line 1", "lacks field 'step'")),
    ([{"step": -1, "layer": 0, "experts": [1, 2]}], ("line 1", "step must be an integer >= 0")),
    ([{"step": 1.0, "layer": 0, "experts": [1, 2]}], ("line 1", "step must be an integer")),
    ([{"step": 10**30, "layer": 0, "experts": [1, 2]}], ("line 1", "step must be an integer")),
    (['{"step": 0, "layer": 0, "experts": [1, 2]', '{"step": 0}'], ("line 1", "malformed JSON")),
    ([{"step": 0, "layer": "0", "experts": [1, 2]}], ("line 1", "layer must be an integer")),
    ([{"step": 0, "layer": 5, "experts": [1, 2]}], ("line 1", "layer 5", "2 MoE layers 0..1")),
    ([{"step": 0, "layer": 0, "experts": [1, 8]}], ("line 1", "expert id 8", "0..7")),
    ([{"step": 0, "layer": 0, "experts": [-1, 2]}], ("line 1", "expert id -1")),
    ([{"step": 0, "layer": 0, "experts": [1, 10**30]}], ("line 1", "expert id 1000000000000000000000000000000")),
    ([{"step": 0, "layer": 0, "experts": [1, 2, 3]}], ("line 1", "3 experts", "top-2")),
    ([{"step": 0, "layer": 0, "experts": [[1, 2], [3]]}], ("line 1", "1 experts", "top-2")),
    ([{"step": 0, "layer": 0, "experts": [2, 2]}], ("line 1", "same expert twice")),
    ([{"step": 0, "layer": 0, "experts": []}], ("line 1", "non-empty list")),
    ([{"step": 0, "layer": 0, "experts": [1.0, 2.0]}], ("line 1", "integer expert ids")),
    ([{"step": 0, "layer": 0, "experts": [True, 2]}], ("line 1", "integer expert ids")),
    ([{"step": 0, "layer": 0, "experts": [[1, 2], 3]}], ("line 1", "integer expert ids")),
    ([{"step": 0, "layer": 0, "experts": "1,2"}], ("line 1", "integer expert ids")),
    ([{"type": "meta"}], ("no routing rows",)),
    ([], ("no routing rows",)),
    ([{"step": 0, "layer": 0, "experts": [1, 2]}, {"step": 1, "layer": 0, "experts": [1, 2]}],
     ("no rows for MoE layer(s) 1",)),
    ([{"step": 0, "layer": 0, "experts": [1, 2]}, {"step": 0, "layer": 1, "experts": [[1, 2], [3, 4]]}],
     ("step 0", "1 token(s) in MoE layer 0", "2 in MoE layer 1")),
    ([{"step": 0, "layer": 0, "experts": [1, 2]}, {"step": 0, "layer": 1, "experts": [1, 2]},
      {"step": 4, "layer": 1, "experts": [1, 2]}], ("step 4", "0 token(s) in MoE layer 0")),
]


@pytest.mark.parametrize("rows,needles", BAD_LOGS, ids=[f"bad{i}" for i in range(len(BAD_LOGS))])
def test_bad_logs(tmp_path, tiny_model, rows, needles):
    path = _write(tmp_path, rows)
    with pytest.raises(TideError) as ei:
        import_jsonl(path, tiny_model)
    _err(ei, *needles)


def test_log_for_a_bigger_model(tmp_path, tiny_model):
    """A mini-shaped log (19 layers, ids up to 255, top-8) does not fit the tiny model, and vice versa."""
    mini = ModelSpec.load("llada2.0-mini")
    rows = [{"step": 0, "layer": l, "experts": list(range(248, 256))} for l in range(19)]
    path = _write(tmp_path, rows)
    assert import_jsonl(path, mini).counts.shape == (1, 19, 256)
    with pytest.raises(TideError) as ei:
        import_jsonl(path, tiny_model)
    _err(ei, "line 1", "top-2")
    with pytest.raises(TideError) as ei:
        import_jsonl(_write(tmp_path, HAND_LOG, "tiny.jsonl"), mini)
    _err(ei, "line 2", "top-8")


def test_invalid_utf8_line(tmp_path, tiny_model):
    path = tmp_path / "log.jsonl"
    path.write_bytes(json.dumps(HAND_LOG[1]).encode() + b"\n\xff\xfe{}\n")
    with pytest.raises(TideError) as ei:
        import_jsonl(path, tiny_model)
    _err(ei, "line 2", "malformed JSON")


def test_missing_file(tmp_path, tiny_model):
    with pytest.raises(TideError) as ei:
        import_jsonl(tmp_path / "nope.jsonl", tiny_model)
    _err(ei, "no such file")


# ---- command line ------------------------------------------------------------------------------------------

def _config_dir(tmp_path, model):
    d = tmp_path / "tiny-model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(model.raw_config))
    return d


def test_cli_writes_trace(tmp_path, tiny_model, capsys):
    log = _write(tmp_path, HAND_LOG)
    out = tmp_path / "t.npz"
    with pytest.raises(SystemExit) as ei:
        run_cli(cli_main, [log, "--model", str(_config_dir(tmp_path, tiny_model)), "--out", str(out),
                           "--first-is-prefill"])
    assert ei.value.code == 0
    assert "wrote" in capsys.readouterr().out
    t = read_trace(out, model=tiny_model)
    np.testing.assert_array_equal(t.kind, [KIND_PREFILL, KIND_DECODE])
    assert t.topk_ids is not None


def test_cli_bad_input_exits_2(tmp_path, tiny_model, capsys):
    log = _write(tmp_path, [HAND_LOG[1], "{oops"])
    with pytest.raises(SystemExit) as ei:
        run_cli(cli_main, [log, "--model", str(_config_dir(tmp_path, tiny_model)), "--out", str(tmp_path / "t.npz")])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "line 2" in err
    assert not (tmp_path / "t.npz").exists()


def test_cli_unknown_model_exits_2(tmp_path, capsys):
    log = _write(tmp_path, HAND_LOG)
    with pytest.raises(SystemExit) as ei:
        run_cli(cli_main, [log, "--model", "no-such-model", "--out", str(tmp_path / "t.npz")])
    assert ei.value.code == 2
    assert "unknown model" in capsys.readouterr().err


def test_cli_as_module(tmp_path):
    rows = [{"step": s, "layer": l + 1, "experts": [(s + l + j) % 256 for j in range(8)]}
            for s in range(3) for l in range(19)]
    log = _write(tmp_path, rows)
    out = tmp_path / "mini.npz"
    ok = subprocess.run([sys.executable, "-m", "traces.import_jsonl", log, "--model", "llada2.0-mini",
                         "--out", str(out), "--layer-offset", "1", "--no-topk-ids"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    t = read_trace(out, model=ModelSpec.load("llada2.0-mini"))
    assert t.num_steps == 3 and t.topk_ids is None
    bad = subprocess.run([sys.executable, "-m", "traces.import_jsonl", log, "--model", "llada2.0-mini",
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1 and "layer 19" in bad.stderr
