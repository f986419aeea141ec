"""The vLLM-MoE-Logger importer and its command line: hand-written per-layer logs in the exact format, and the
shipped logs of Qwen1.5-MoE-A2.7B-Chat when the shared folder is present."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from offload.errors import TideError, run_cli
from offload.model_spec import ModelSpec
from offload.trace import KIND_DECODE, KIND_PREFILL
from offload.trace_check import validate_trace
from offload.trace_io import read_trace
from traces.import_vllm_logger import main as cli_main
from traces.vllm_logger import RouterShape, import_vllm_logger, warmup_calls

SHAPE = RouterShape(num_experts=8, top_k=2)  # the tiny model's shape (tests/conftest.py): 8 experts, top-2
REAL_LOGS = Path(__file__).resolve().parents[3] / "shared" / "traces-external" / "weiran0129__vLLM-MoE-Logger" / "Logs"

# The real calls of logged layer 3: a prefill of 5 prompt tokens, then decode steps of a shrinking batch.
PREFILL = [[0, 1], [0, 2], [1, 3], [4, 5], [0, 7]]
DECODE = [[[0, 1], [2, 3], [0, 3]], [[5, 6], [5, 7], [1, 0]], [[2, 4], [4, 6]], [[7, 0]]]
REAL_3 = [PREFILL, *DECODE]


def _other(calls):
    """Logged layer 7 routes each token through a fixed permutation of layer 3's ids (keeps ids distinct)."""
    return [[[(3 * e + 1) % 8 for e in tok] for tok in call] for call in calls]


REAL_7 = _other(REAL_3)
DUMMY = [[[6, 7]] * 6, [[6, 7]] * 3]      # vLLM's profiling and warm-up runs: identical rows
WARM = [[[6, 7], [7, 6]]]                  # a warm-up run whose rows differ, before the larger prefill


def _rows(layer, calls, dummy_calls=0):
    """Route rows: every row's weights differ, except in the first ``dummy_calls`` calls (all identical)."""
    out = []
    for c, call in enumerate(calls):
        for i, ids in enumerate(call):
            w = [0.5, 0.25] if c < dummy_calls else [0.5 - 0.01 * i, 0.2 - 0.001 * c]
            out.append({"type": "route", "req_id": "r1", "token_idx": i, "layer": layer, "topk_ids": ids,
                        "topk_weights": w})
    return out


def _meta(layer, top_k=2, model_id="hand/moe"):
    return {"type": "meta", "model_id": model_id, "vllm_version": "0.11.2", "seed": 1234,
            "layers_logged": [layer], "top_k": top_k, "created_at": 1.5}


def _write(tmp_path, rows, name):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _log(tmp_path, layer, real, name=None, warmup=True, **meta):
    calls = [*DUMMY, *WARM, *real] if warmup else real
    rows = [_meta(layer, **meta), *_rows(layer, calls, dummy_calls=len(DUMMY) if warmup else 0)]
    return _write(tmp_path, rows, name or f"moe_layer{layer}.jsonl")


def _pair(tmp_path, real_7=None):
    return [_log(tmp_path, 3, REAL_3), _log(tmp_path, 7, REAL_7 if real_7 is None else real_7)]


def _err(excinfo, *needles):
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, TideError) and "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def _counts(*layers):
    """Brute-force counts [steps, layers, 8] of per-layer call lists."""
    want = np.zeros((len(layers[0]), len(layers), 8), dtype=np.int64)
    for l, calls in enumerate(layers):
        for s, call in enumerate(calls):
            for tok in call:
                for e in tok:
                    want[s, l, e] += 1
    return want


# ---- the import --------------------------------------------------------------------------------------------

def test_counts_and_step_fields(tmp_path):
    t = import_vllm_logger(_pair(tmp_path), SHAPE)
    validate_trace(t)
    np.testing.assert_array_equal(t.counts, _counts(REAL_3, REAL_7))
    assert t.counts[0, 0, 0] == 3 and t.counts[0, 0, 6] == 0   # prefill, layer 3: expert 0 in rows 0, 1, 4
    assert t.counts[4, 1].tolist() == [0, 1, 0, 0, 0, 0, 1, 0]  # last decode, layer 7: ids 3*7+1, 3*0+1 mod 8
    np.testing.assert_array_equal(t.tokens_forwarded, [5, 3, 3, 2, 1])
    np.testing.assert_array_equal(t.kind, [KIND_PREFILL] + [KIND_DECODE] * 4)
    np.testing.assert_array_equal(t.tokens_committed, [0, 3, 3, 2, 1])
    np.testing.assert_array_equal(t.block, [-1, 0, 1, 2, 3])
    np.testing.assert_array_equal(t.step_in_block, [0] * 5)
    # mean prompt ceil(5 / 3) = 2, plus the decode step's index from 1; never below the tokens forwarded
    np.testing.assert_array_equal(t.context_tokens, [5, 3, 4, 5, 6])
    gen = t.header["generation"]
    assert gen["mode"] == "autoregressive" and gen["block_length"] == 1
    assert gen["gen_length"] == 9 and gen["prompt_length"] == 5
    assert t.topk_ids is None


def test_header_model_and_origin(tmp_path):
    paths = _pair(tmp_path)
    t = import_vllm_logger(paths, SHAPE)
    assert t.header["model"] == {"name": "hand/moe", "config_hash": None, "num_moe_layers": 2, "num_experts": 8,
                                 "top_k": 2}
    o = t.header["origin"]
    assert o["kind"] == "imported" and o["format"] == "vllm-moe-logger"
    assert o["source"] == [str(p) for p in paths] and o["model_id"] == "hand/moe"
    assert o["layers"] == [3, 7] and o["logged_layers"] == [3, 7]
    assert o["dropped_steps"] == 0 and o["skip_calls"] is None


def test_spec_model_gives_name_and_hash_when_layers_match(tmp_path, tiny_model):
    t = import_vllm_logger(_pair(tmp_path), tiny_model)
    validate_trace(t, tiny_model)  # 2 logged layers, the tiny model's 2 MoE layers: replays on it
    assert t.header["model"]["name"] == "tiny" and t.header["model"]["config_hash"] == tiny_model.config_hash
    deeper = import_vllm_logger(_pair(tmp_path), tiny_model, layer_map=[3, 7, 7])
    assert deeper.header["model"]["config_hash"] is None


def test_warmup_calls_detected_and_dropped(tmp_path):
    t = import_vllm_logger(_pair(tmp_path), SHAPE)
    assert t.header["origin"]["warmup_calls"] == [3, 3]
    assert int(t.tokens_forwarded.sum()) == 14  # the 6 + 3 + 2 warm-up rows are not in the trace
    bare = import_vllm_logger([_log(tmp_path, 3, REAL_3, "a.jsonl", warmup=False),
                               _log(tmp_path, 7, REAL_7, "b.jsonl", warmup=False)], SHAPE)
    assert bare.header["origin"]["warmup_calls"] == [0, 0]
    np.testing.assert_array_equal(bare.counts, t.counts)


def test_identical_row_calls_are_dummy_runs(tmp_path):
    """Dummy runs larger than the prefill: only their identical rows tell them from the real run. A real call
    whose rows share ids (but not weights) is not one."""
    real = [PREFILL, [[1, 2], [1, 2]], [[3, 4]]]
    rows = _rows(3, [[[6, 7]] * 8, [[5, 7]] * 6, *real], dummy_calls=2)
    t = import_vllm_logger([_write(tmp_path, [_meta(3), *rows], "d.jsonl")], SHAPE)
    assert t.header["origin"]["warmup_calls"] == [2]
    np.testing.assert_array_equal(t.tokens_forwarded, [5, 2, 1])
    np.testing.assert_array_equal(t.counts[:, 0], _counts(real)[:, 0])


@pytest.mark.parametrize("sizes,dummy,want", [
    ([8192, 256, 65, 1406, 25, 25, 24, 11], [1, 1, 0, 0, 0, 0, 0, 0], 3),   # the shipped logs' shape
    ([8192, 256, 100, 25, 25], [1, 1, 0, 0, 0], 2),                       # prefill smaller than the dummy runs
    ([8192, 256, 100, 25, 25], [0, 0, 0, 0, 0], 0),                       # without the identical-row test
    ([70, 65, 25, 1], [0, 0, 0, 0], 0),                                    # no warm-up at all
    ([7], [0], 0),
])
def test_warmup_rule(sizes, dummy, want):
    assert warmup_calls(np.array(sizes), np.array(dummy, dtype=bool)) == want


def test_skip_calls_overrides(tmp_path):
    t = import_vllm_logger(_pair(tmp_path), SHAPE, skip_calls=2)  # the 2-row warm-up becomes the prefill
    np.testing.assert_array_equal(t.tokens_forwarded, [2, 5, 3, 3, 2, 1])
    np.testing.assert_array_equal(t.kind, [KIND_PREFILL] + [KIND_DECODE] * 5)
    assert t.header["origin"]["warmup_calls"] == [2, 2] and t.header["origin"]["skip_calls"] == 2
    with pytest.raises(TideError) as ei:
        import_vllm_logger(_pair(tmp_path), SHAPE, skip_calls=8)
    _err(ei, "skipping 8 forward calls", "layer 3's 8")


def test_per_token_ids(tmp_path):
    t = import_vllm_logger(_pair(tmp_path), SHAPE, keep_topk=True)
    want = np.stack([np.concatenate(REAL_3), np.concatenate(REAL_7)], axis=1)
    np.testing.assert_array_equal(t.topk_ids, want)
    assert t.topk_ids.dtype == np.int16


def test_file_order_and_layers_in_one_file(tmp_path):
    ref = import_vllm_logger(_pair(tmp_path), SHAPE, keep_topk=True)
    rev = import_vllm_logger(_pair(tmp_path)[::-1], SHAPE, keep_topk=True)
    np.testing.assert_array_equal(rev.counts, ref.counts)
    # one run logging both layers: their rows interleave call by call
    calls3, calls7 = _rows(3, [*DUMMY, *WARM, *REAL_3], 2), _rows(7, [*DUMMY, *WARM, *REAL_7], 2)
    meta = dict(_meta(3), layers_logged=[3, 7])
    both = _write(tmp_path, [meta, *[r for pair in zip(calls7, calls3) for r in pair]], "both.jsonl")
    t = import_vllm_logger([both], SHAPE, keep_topk=True)
    np.testing.assert_array_equal(t.counts, ref.counts)
    np.testing.assert_array_equal(t.topk_ids, ref.topk_ids)
    assert t.header["origin"]["layers"] == [3, 7]


def test_layer_map(tmp_path):
    t = import_vllm_logger(_pair(tmp_path), SHAPE, layer_map=[7, 3, 3])
    np.testing.assert_array_equal(t.counts, _counts(REAL_7, REAL_3, REAL_3))
    assert t.header["origin"]["layers"] == [7, 3, 3] and t.header["model"]["num_moe_layers"] == 3
    with pytest.raises(TideError) as ei:
        import_vllm_logger(_pair(tmp_path), SHAPE, layer_map=[3, 5])
    _err(ei, "layer 5", "no log holds", "3, 7")
    with pytest.raises(TideError) as ei:
        import_vllm_logger(_pair(tmp_path), SHAPE, layer_map=[3, 3])
    _err(ei, "layer 7 is logged", "does not use it")


# ---- calls that do not line up -----------------------------------------------------------------------------

SHORT_7 = [REAL_7[0], REAL_7[1], REAL_7[2][:2], REAL_7[3], REAL_7[4]]  # decode step 2 lost a row in layer 7


def test_misaligned_call_refused(tmp_path):
    with pytest.raises(TideError) as ei:
        import_vllm_logger(_pair(tmp_path, SHORT_7), SHAPE)
    _err(ei, "forward call 2 after the warm-up", "2 rows in", "moe_layer7.jsonl (layer 7)", "but 3 in",
         "moe_layer3.jsonl (layer 3)", "drop-incomplete")


def test_drop_incomplete_drops_and_reports(tmp_path):
    t = import_vllm_logger(_pair(tmp_path, SHORT_7), SHAPE, drop_incomplete=True, keep_topk=True)
    keep = [0, 1, 3, 4]
    np.testing.assert_array_equal(t.counts, _counts(REAL_3, REAL_7)[keep])
    np.testing.assert_array_equal(t.tokens_forwarded, [5, 3, 2, 1])
    np.testing.assert_array_equal(t.block, [-1, 0, 1, 2])
    np.testing.assert_array_equal(t.context_tokens, [5, 3, 5, 6])  # from the call's place in the run
    assert t.header["origin"]["dropped_steps"] == 1 and t.header["generation"]["gen_length"] == 6
    assert t.topk_ids.shape == (11, 2, 2)


def test_log_cut_short(tmp_path):
    paths = _pair(tmp_path, REAL_7[:-1])
    with pytest.raises(TideError) as ei:
        import_vllm_logger(paths, SHAPE)
    _err(ei, "moe_layer7.jsonl (layer 7) has 4 forward calls after 3 warm-up call(s)",
         "moe_layer3.jsonl (layer 3) has 5")
    t = import_vllm_logger(paths, SHAPE, drop_incomplete=True)
    assert t.num_steps == 4 and t.header["origin"]["dropped_steps"] == 1


def test_nothing_lines_up(tmp_path):
    real_7 = [[*call, [0, 1]] for call in REAL_7]  # one row more in every call
    with pytest.raises(TideError) as ei:
        import_vllm_logger(_pair(tmp_path, real_7), SHAPE, drop_incomplete=True)
    _err(ei, "no forward call has the same number of rows")


# ---- bad input -------------------------------------------------------------------------------------------------

ROW = {"type": "route", "req_id": "r1", "token_idx": 0, "layer": 3, "topk_ids": [1, 2], "topk_weights": [0.5, 0.2]}


def _without(key):
    return {k: v for k, v in ROW.items() if k != key}


BAD_ROWS = [
    (["{not json"], ("line 2", "malformed JSON")),
    (["[1, 2]"], ("line 2", "expected a JSON object")),
    ([_without("type")], ("line 2", "lacks field 'type'")),
    ([_without("token_idx")], ("line 2", "lacks field 'token_idx'")),
    ([_without("topk_ids")], ("line 2", "lacks field 'topk_ids'")),
    ([_without("topk_weights")], ("line 2", "lacks field 'topk_weights'")),
    ([dict(ROW, token_idx=-1)], ("line 2", "token_idx must be an integer >= 0")),
    ([dict(ROW, token_idx="0")], ("line 2", "token_idx must be an integer")),
    ([dict(ROW, token_idx=True)], ("line 2", "token_idx must be an integer")),
    ([dict(ROW, layer=3.0)], ("line 2", "layer must be an integer")),
    ([dict(ROW, topk_ids=[1, 8])], ("line 2", "expert id 8", "0..7")),
    ([dict(ROW, topk_ids=[-1, 2])], ("line 2", "expert id -1")),
    ([dict(ROW, topk_ids=[1, 10**30])], ("line 2", "expert id 1000000000000000000000000000000")),
    ([dict(ROW, topk_ids=[2, 2])], ("line 2", "same expert twice")),
    ([dict(ROW, topk_ids=[1, 2, 3])], ("line 2", "routes to 3 experts", "top-2")),
    ([dict(ROW, topk_ids="1,2")], ("line 2", "topk_ids must be a non-empty list of integer")),
    ([dict(ROW, topk_ids=[1.0, 2])], ("line 2", "topk_ids must be")),
    ([dict(ROW, topk_weights=[0.5])], ("line 2", "topk_weights must be a list of 2 numbers")),
    ([dict(ROW, topk_weights=["a", 0.1])], ("line 2", "topk_weights must be")),
    ([ROW, _meta(3)], ("line 3", "second meta line")),
    ([dict(ROW, layer=4)], ("line 2", "layer 4 is not among the meta's layers_logged [3]")),
    ([dict(ROW, token_idx=1)], ("line 2", "first route row has token_idx 1")),
    ([ROW, dict(ROW, token_idx=2)], ("line 3", "token_idx 2 follows 0", "expected 1")),
    ([], ("no route rows",)),
    ([ROW, dict(ROW, token_idx=1)], ("only dummy forward calls",)),
]


@pytest.mark.parametrize("rows,needles", BAD_ROWS, ids=[f"bad{i}" for i in range(len(BAD_ROWS))])
def test_bad_rows(tmp_path, rows, needles):
    path = _write(tmp_path, [_meta(3), *rows], "bad.jsonl")
    with pytest.raises(TideError) as ei:
        import_vllm_logger([path], SHAPE)
    _err(ei, "bad.jsonl", *needles)


def test_model_must_agree_on_top_k(tmp_path):
    path = _log(tmp_path, 3, REAL_3, top_k=4)
    with pytest.raises(TideError) as ei:
        import_vllm_logger([path], SHAPE)
    _err(ei, "line 1", "meta says top-4", "uses top-2")
    with pytest.raises(TideError) as ei:
        import_vllm_logger([_log(tmp_path, 3, REAL_3)], ModelSpec.load("llada2.0-mini"))
    _err(ei, "line 1", "meta says top-2", "llada2.0-mini uses top-8")


def test_bad_file_sets(tmp_path):
    with pytest.raises(TideError) as ei:
        import_vllm_logger([_log(tmp_path, 3, REAL_3), _log(tmp_path, 3, REAL_3, "again.jsonl")], SHAPE)
    _err(ei, "layer 3 is logged in both")
    with pytest.raises(TideError) as ei:
        import_vllm_logger([_log(tmp_path, 3, REAL_3), _log(tmp_path, 7, REAL_7, model_id="other/moe")], SHAPE)
    _err(ei, "different models", "'hand/moe'", "'other/moe'")
    with pytest.raises(TideError) as ei:
        import_vllm_logger([tmp_path / "nope.jsonl"], SHAPE)
    _err(ei, "nope.jsonl: no such file")
    with pytest.raises(TideError) as ei:
        import_vllm_logger([], SHAPE)
    _err(ei, "no routing log given")
    with pytest.raises(TideError) as ei:
        import_vllm_logger(_pair(tmp_path), SHAPE, skip_calls=-1)
    _err(ei, "skip-calls must be an integer >= 0")


@pytest.mark.parametrize("experts,top_k,needle", [(0, 1, "experts must be"), (4, 5, "exceeds"), (8, True, "top-k must be")])
def test_bad_router_shape(experts, top_k, needle):
    with pytest.raises(TideError) as ei:
        RouterShape(experts, top_k)
    _err(ei, needle)


# ---- command line ----------------------------------------------------------------------------------------------

def test_cli_writes_trace(tmp_path, capsys):
    paths = [str(p) for p in _pair(tmp_path, SHORT_7)]
    out = tmp_path / "t.npz"
    with pytest.raises(SystemExit) as ei:
        run_cli(cli_main, [*paths, "--experts", "8", "--top-k", "2", "--out", str(out), "--drop-incomplete",
                           "--with-topk", "--layer-map", "3,7,7"])
    assert ei.value.code == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "dropped steps 1" in printed and "layers 3, 7, 7" in printed
    t = read_trace(out)
    np.testing.assert_array_equal(t.kind, [KIND_PREFILL] + [KIND_DECODE] * 3)
    assert t.topk_ids is not None and t.num_moe_layers == 3 and t.header["model"]["name"] == "hand/moe"


@pytest.mark.parametrize("args,needle", [
    (["--experts", "8", "--top-k", "2"], "forward call 2 after the warm-up"),
    (["--experts", "8"], "give --model, or --experts and --top-k"),
    (["--experts", "8", "--top-k", "2", "--model", "llada2.0-mini"], "not both"),
    (["--experts", "8", "--top-k", "2", "--layer-map", "3,x"], "comma-separated layer numbers"),
    (["--model", "llada2.0-mini"], "uses top-8"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, args, needle):
    out = tmp_path / "t.npz"
    with pytest.raises(SystemExit) as ei:
        run_cli(cli_main, [*map(str, _pair(tmp_path, SHORT_7)), "--out", str(out), *args])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_cli_as_module(tmp_path):
    out = tmp_path / "t.npz"
    run = subprocess.run([sys.executable, "-m", "traces.import_vllm_logger", *map(str, _pair(tmp_path)),
                          "--experts", "8", "--top-k", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert read_trace(out).num_steps == 5


# ---- the shipped logs ------------------------------------------------------------------------------------------

def test_real_logs():
    if not REAL_LOGS.is_dir():
        pytest.skip(f"shared vLLM-MoE-Logger logs not found at {REAL_LOGS}")
    paths = sorted(REAL_LOGS.glob("moe_layer*.jsonl"))
    t = import_vllm_logger(paths, RouterShape(num_experts=60, top_k=4), keep_topk=True)
    o = t.header["origin"]
    assert o["layers"] == [0, 8, 12, 18, 23] and o["warmup_calls"] == [3] * 5 and o["dropped_steps"] == 0
    assert t.header["model"]["name"] == "Qwen/Qwen1.5-MoE-A2.7B-Chat"
    # SOURCE.md: one prefill of 1,406 rows, then 127 decode steps of 2,886 rows (25 for 82 steps, down to 11)
    assert t.kind[0] == KIND_PREFILL and t.tokens_forwarded[0] == 1406
    decode = t.tokens_forwarded[1:]
    assert (t.kind[1:] == KIND_DECODE).all() and decode.size == 127 and int(decode.sum()) == 2886
    assert (decode[:82] == 25).all() and decode[82] == 24 and decode[-1] == 11 and (np.diff(decode) <= 0).all()
    assert t.generated_tokens == 2886 and t.header["generation"]["prompt_length"] == 1406
    assert t.topk_ids.shape == (1406 + 2886, 5, 4)
