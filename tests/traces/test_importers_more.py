"""Incomplete steps in the JSONL importer (--drop-incomplete), the per-token dump importer (traces.import_tokens),
and both on the shared real vLLM logs when present."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offload.errors import TideError, run_cli
from offload.trace import KIND_DECODE, KIND_PREFILL
from offload.trace_check import validate_trace
from offload.trace_io import read_trace
from traces.import_jsonl import main as jsonl_main
from traces.import_tokens import import_tokens, main as tokens_main
from traces.importers import import_jsonl

REAL_LOGS = Path(__file__).resolve().parents[3] / "shared" / "traces-external" / "weiran0129__vLLM-MoE-Logger" / "Logs"

# tiny model (tests/conftest.py): 2 MoE layers, 8 experts, top-2
# step 0: 2 tokens; step 1: 1 token; step 2: 2 tokens in layer 0 but only 1 in layer 1 (its last row lost)
CUT_LOG = [
    {"step": 0, "layer": 0, "experts": [[0, 1], [2, 3]]}, {"step": 0, "layer": 1, "experts": [[4, 5], [6, 7]]},
    {"step": 1, "layer": 0, "experts": [1, 2]}, {"step": 1, "layer": 1, "experts": [3, 4]},
    {"step": 2, "layer": 0, "experts": [[5, 6], [7, 0]]}, {"step": 2, "layer": 1, "experts": [1, 2]},
    {"step": 3, "layer": 0, "experts": [0, 7]}, {"step": 3, "layer": 1, "experts": [6, 5]},
]


def _write(tmp_path, rows, name="log.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert isinstance(exc.value, TideError) and "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


# ---- JSONL: incomplete steps --------------------------------------------------------------------------------

def test_jsonl_incomplete_step_is_refused_with_a_hint(tmp_path, tiny_model):
    with pytest.raises(TideError) as e:
        import_jsonl(_write(tmp_path, CUT_LOG), tiny_model)
    _one_line(e, "step 2", "1 token(s) in MoE layer 1", "2 in MoE layer 0", "--drop-incomplete")


def test_jsonl_drop_incomplete(tmp_path, tiny_model):
    t = import_jsonl(_write(tmp_path, CUT_LOG), tiny_model, drop_incomplete=True, first_is_prefill=True)
    validate_trace(t, tiny_model)
    assert t.header["origin"]["dropped_steps"] == 1 and t.header["origin"]["log_steps"] == [0, 3]
    assert t.tokens_forwarded.tolist() == [2, 1, 1]
    assert t.context_tokens.tolist() == [2, 3, 6]  # step 3 still attends to the dropped step's 2 tokens
    assert t.kind.tolist() == [KIND_PREFILL, KIND_DECODE, KIND_DECODE] and t.block.tolist() == [-1, 0, 1]
    assert t.counts[2, 0, [0, 7]].tolist() == [1, 1] and t.counts[2].sum() == 4
    np.testing.assert_array_equal(t.topk_ids[3], [[0, 7], [6, 5]])
    full = import_jsonl(_write(tmp_path, CUT_LOG[:4] + CUT_LOG[6:], "ok.jsonl"), tiny_model, first_is_prefill=True)
    np.testing.assert_array_equal(full.counts, t.counts)
    assert full.header["origin"]["dropped_steps"] == 0


def test_jsonl_dropped_prefill_leaves_decode_steps(tmp_path, tiny_model):
    rows = [{"step": 0, "layer": 0, "experts": [[0, 1], [2, 3]]}, {"step": 0, "layer": 1, "experts": [4, 5]},
            *CUT_LOG[2:4]]
    t = import_jsonl(_write(tmp_path, rows), tiny_model, drop_incomplete=True, first_is_prefill=True)
    assert t.kind.tolist() == [KIND_DECODE] and t.header["origin"]["first_is_prefill"] is False
    assert t.header["generation"]["prompt_length"] == 0


def test_jsonl_all_incomplete(tmp_path, tiny_model):
    with pytest.raises(TideError) as e:
        import_jsonl(_write(tmp_path, CUT_LOG[4:6]), tiny_model, drop_incomplete=True)
    _one_line(e, "every step is incomplete")


def test_jsonl_cli_prints_dropped(tmp_path, tiny_model, capsys):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(tiny_model.raw_config))
    log, out = _write(tmp_path, CUT_LOG), tmp_path / "t.npz"
    with pytest.raises(SystemExit) as e:
        run_cli(jsonl_main, [log, "--model", str(d), "--out", str(out)])
    assert e.value.code == 2 and "--drop-incomplete" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_cli(jsonl_main, [log, "--model", str(d), "--out", str(out), "--drop-incomplete"])
    assert e.value.code == 0 and "dropped 1 incomplete step(s)" in capsys.readouterr().out
    assert read_trace(out).num_steps == 3


# ---- per-token dumps ------------------------------------------------------------------------------------------

def _token_rows(log: list[dict], token_base: int = 100) -> list[dict]:
    """CUT_LOG as one-token-one-layer rows, with token ids (token j of step s: base + 10 s + j) and weights."""
    out = []
    for r in log:
        toks = r["experts"] if isinstance(r["experts"][0], list) else [r["experts"]]
        for j, ex in enumerate(toks):
            out.append({"step": r["step"], "layer": r["layer"], "token_id": token_base + 10 * r["step"] + j,
                        "experts": ex, "weights": [0.7, 0.3]})
    return out


def test_tokens_per_layer_rows_match_jsonl(tmp_path, tiny_model):
    rows = CUT_LOG[:4] + CUT_LOG[6:]
    a = import_tokens(_write(tmp_path, [{"type": "meta", "model": "x"}, *_token_rows(rows)]), tiny_model,
                      first_is_prefill=True)
    b = import_jsonl(_write(tmp_path, rows, "j.jsonl"), tiny_model, first_is_prefill=True)
    validate_trace(a, tiny_model)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
    assert a.header["origin"]["format"] == "tokens" and a.context_tokens.tolist() == b.context_tokens.tolist()


def test_tokens_all_layer_rows(tmp_path, tiny_model):
    rows = [{"step": 0, "token_id": 9, "experts": [[0, 1], [2, 3]], "weights": [[0.5, 0.5], [0.9, 0.1]]},
            {"step": 0, "token_id": 4, "experts": [[4, 5], [6, 7]]},
            {"step": 1, "token_id": 8, "layers": [2, 1], "experts": [[1, 2], [3, 4]]}]
    t = import_tokens(_write(tmp_path, rows), tiny_model, layer_offset=1, first_is_prefill=True)
    assert t.tokens_forwarded.tolist() == [2, 1] and t.kind.tolist() == [KIND_PREFILL, KIND_DECODE]
    # with layer_offset 1: log layers 1, 2 are MoE layers 0, 1; the third row lists layer 2 first
    np.testing.assert_array_equal(t.topk_ids, [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[3, 4], [1, 2]]])


def test_tokens_incomplete_refused_then_dropped(tmp_path, tiny_model, capsys):
    path = _write(tmp_path, _token_rows(CUT_LOG))
    with pytest.raises(TideError) as e:
        import_tokens(path, tiny_model)
    _one_line(e, "step 2", "MoE layer 1", "--drop-incomplete")
    t = import_tokens(path, tiny_model, drop_incomplete=True)
    assert t.num_steps == 3 and t.header["origin"]["dropped_steps"] == 1
    out = tmp_path / "t.npz"
    with pytest.raises(SystemExit) as ex:
        run_cli(tokens_main, [path, "--model", "qwen3-30b-a3b", "--out", str(out)])
    assert ex.value.code == 2 and capsys.readouterr().err.count("\n") == 1  # top-8 model: one-line error


BAD_TOKENS = [
    ({"step": 0, "layer": 0, "experts": [1, 2]}, "lacks field 'token_id'"),
    ({"step": 0, "layer": 0, "token_id": -1, "experts": [1, 2]}, "token_id must be an integer >= 0"),
    ({"step": 0, "layer": 0, "token_id": 1, "experts": [1, 2, 3]}, "top-2"),
    ({"step": 0, "layer": 0, "token_id": 1, "experts": [1, 2], "weights": [0.5]}, "weights must be 2 finite"),
    ({"step": 0, "layer": 0, "token_id": 1, "experts": [1, 2], "weights": [0.5, -1]}, "weights must be 2 finite"),
    ({"step": 0, "token_id": 1, "experts": [1, 2]}, "per-layer expert-id lists"),
    ({"step": 0, "token_id": 1, "experts": [[1, 2]], "layers": [0, 1]}, "one layer per experts list"),
    ({"step": 0, "layer": 7, "token_id": 1, "experts": [1, 2]}, "outside model"),
    ({"step": 0, "layer": 0, "token_id": 1, "experts": [1, 9]}, "expert id 9"),
]


@pytest.mark.parametrize("row,needle", BAD_TOKENS, ids=[f"bad{i}" for i in range(len(BAD_TOKENS))])
def test_tokens_bad_rows(tmp_path, tiny_model, row, needle):
    with pytest.raises(TideError) as e:
        import_tokens(_write(tmp_path, [row]), tiny_model)
    _one_line(e, "line 1", needle) if needle != "expert id 9" else _one_line(e, needle)


def test_tokens_misaligned_layers(tmp_path, tiny_model):
    rows = [{"step": 0, "layer": 0, "token_id": 5, "experts": [0, 1]},
            {"step": 0, "layer": 1, "token_id": 6, "experts": [0, 1]}]
    with pytest.raises(TideError) as e:
        import_tokens(_write(tmp_path, rows), tiny_model)
    _one_line(e, "line 2", "token_id 6", "but 5", "do not line up")


# ---- the shared real logs ------------------------------------------------------------------------------------

def test_real_vllm_logs_cut_short(tmp_path):
    """The shared vLLM-MoE-Logger logs (not part of the project; skipped without them), with one layer's last
    decode rows removed as a cut log would lose them: refused without --drop-incomplete, dropped with it."""
    if not REAL_LOGS.is_dir():
        pytest.skip(f"shared vLLM-MoE-Logger logs not found at {REAL_LOGS}")
    pytest.importorskip("scipy", exc_type=ImportError)
    from traces.synthetic_ar import trace_locality
    from traces.vllm_logger import RouterShape, import_vllm_logger

    paths = sorted(REAL_LOGS.glob("moe_layer*.jsonl"))
    shape = RouterShape(num_experts=60, top_k=4)
    full = import_vllm_logger(paths, shape, keep_topk=True)
    reuse, _ = trace_locality(full)
    assert 0.08 < reuse < 0.15  # published Qwen1.5-MoE next-token reuse about 0.11 (routing-stats.md)
    lines = paths[0].read_text().splitlines()
    cut = tmp_path / paths[0].name
    cut.write_text("\n".join(lines[:-5]) + "\n")  # the last call (11 rows) loses 5 rows
    cut_paths = [cut, *paths[1:]]
    with pytest.raises(TideError) as e:
        import_vllm_logger(cut_paths, shape)
    _one_line(e, "drop-incomplete")
    t = import_vllm_logger(cut_paths, shape, drop_incomplete=True)
    assert t.header["origin"]["dropped_steps"] == 1 and t.num_steps == full.num_steps - 1
    np.testing.assert_array_equal(t.counts, full.counts[:-1])

    # the same routing as a per-token dump (decode calls only, one row per token and layer)
    start = np.cumsum(full.tokens_forwarded) - full.tokens_forwarded
    dump = []
    for s in range(1, 6):
        for j in range(int(full.tokens_forwarded[s])):
            ids = full.topk_ids[start[s] + j]
            dump += [json.dumps({"step": s, "layer": l, "token_id": j, "experts": ids[l].tolist()})
                     for l in range(5)]
    from offload.model_spec import ModelSpec
    spec5 = ModelSpec.from_config({**ModelSpec.load("qwen1.5-moe-a2.7b").raw_config, "num_hidden_layers": 5})
    tk = import_tokens(_write(tmp_path, dump, "dump.jsonl"), spec5)
    np.testing.assert_array_equal(tk.counts, full.counts[1:6])
