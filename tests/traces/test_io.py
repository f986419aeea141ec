"""Trace files: round trips, atomic writes, and one test per validation error (one-line TideError)."""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import zipfile

import numpy as np
import pytest

from offload.errors import TideError
from offload.model_spec import ModelSpec
from offload.atomic_io import atomic_write_bytes, atomic_write_text
from offload.trace_io import read_trace, write_trace
from offload.trace import STEP_DTYPES, STEP_FIELDS, Trace
from offload.trace_check import check_model_match, validate_header, validate_trace


def _one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, TideError)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def _parts(trace: Trace) -> tuple[dict, dict[str, np.ndarray]]:
    return copy.deepcopy(trace.header), {n: a.copy() for n, a in trace.arrays().items()}


def _write_raw(path, header, arrays, header_bytes: bytes | None = None) -> None:
    """Write an .npz the way write_trace does, but without validating anything."""
    if header_bytes is None:
        header_bytes = json.dumps(header).encode()
    members = {"header": np.frombuffer(header_bytes, dtype=np.uint8), **arrays}
    with open(path, "wb") as f:
        np.savez_compressed(f, **members)


def _assert_same(a: Trace, b: Trace) -> None:
    assert a.header == b.header
    for f in ("counts", *STEP_FIELDS):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    if a.topk_ids is None:
        assert b.topk_ids is None
    else:
        assert b.topk_ids is not None and np.array_equal(a.topk_ids, b.topk_ids)


# ---- round trips -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_topk", [True, False])
def test_round_trip(tmp_path, tiny_trace_factory, tiny_model, with_topk):
    trace = tiny_trace_factory(with_topk=with_topk)
    path = write_trace(trace, tmp_path / "sub" / "t.npz")  # parent directory is created
    assert path.exists()
    back = read_trace(path)
    _assert_same(trace, back)
    assert back.counts.dtype == np.int32
    for f in STEP_FIELDS:
        assert getattr(back, f).dtype == STEP_DTYPES[f]
    if with_topk:
        assert back.topk_ids.dtype == np.int16
    _assert_same(trace, read_trace(path, model=tiny_model))
    # and the file rewritten from what was read is read back the same
    _assert_same(back, read_trace(write_trace(back, tmp_path / "again.npz")))


def test_round_trip_accepts_str_path(tmp_path, tiny_trace_factory):
    trace = tiny_trace_factory()
    write_trace(trace, str(tmp_path / "t.npz"))
    _assert_same(trace, read_trace(str(tmp_path / "t.npz")))


# ---- atomic writes ---------------------------------------------------------------------------------------

def test_atomic_write_leaves_no_temp_file(tmp_path, tiny_trace_factory):
    write_trace(tiny_trace_factory(), tmp_path / "t.npz")
    write_trace(tiny_trace_factory(seed=1), tmp_path / "t.npz")  # overwrite
    atomic_write_text(tmp_path / "note.txt", "hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt", "t.npz"]
    assert (tmp_path / "note.txt").read_text() == "hello"


def test_failing_writer_keeps_old_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old contents")

    def writer(f):
        f.write(b"partial new contents")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write_bytes(target, writer)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_interrupted_writer_keeps_old_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def writer(f):
        f.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, writer)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_invalid_trace_is_not_written(tmp_path, tiny_trace_factory):
    good = tiny_trace_factory()
    path = write_trace(good, tmp_path / "t.npz")
    before = path.read_bytes()
    bad = dataclasses.replace(good, counts=good.counts + 1)
    with pytest.raises(TideError) as ei:
        write_trace(bad, path)
    _one_line_error(ei, "assignments")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]


# ---- validation errors, through files --------------------------------------------------------------------

def _mut_negative_count(h, a):
    a["counts"][1, 0, 0] = -1


def _mut_assignment_sum(h, a):
    a["counts"][2, 1, 3] += 1


def _mut_version(h, a):
    h["version"] = 2


def _mut_mode(h, a):
    h["generation"]["mode"] = "speculative"


def _mut_shape_vs_header(h, a):
    h["model"]["num_experts"] = 9


def _mut_context(h, a):
    a["context_tokens"][3] = 2


def _mut_kind(h, a):
    a["kind"][4] = 7


def _mut_committed(h, a):
    h["generation"]["gen_length"] = 3


def _mut_topk(h, a):
    ids = a["topk_ids"]
    row = ids[5, 0]
    other = next(e for e in range(8) if e not in row)
    ids[5, 0, 0] = other


def _mut_topk_range(h, a):
    a["topk_ids"][0, 0, 0] = 8


def _mut_topk_shape(h, a):
    a["topk_ids"] = a["topk_ids"][:-1]


def _mut_no_token(h, a):
    a["tokens_forwarded"][0] = 0


def _mut_block(h, a):
    a["block"][0] = -2


def _mut_negative_committed(h, a):
    a["tokens_committed"][0] = -1


def _mut_step_field_shape(h, a):
    a["block"] = a["block"][:-1]


def _mut_counts_ndim(h, a):
    a["counts"] = a["counts"].reshape(6, -1)


def _mut_no_steps(h, a):
    for n in list(a):
        a[n] = a[n][:0]


def _mut_lacks_model(h, a):
    del h["model"]


def _mut_lacks_top_k(h, a):
    del h["model"]["top_k"]


def _mut_topk_exceeds(h, a):
    h["model"]["top_k"] = 9


def _mut_block_length(h, a):
    h["generation"]["block_length"] = 0


def _mut_origin(h, a):
    h["origin"]["kind"] = "dreamed"


def _mut_header_not_object(h, a):
    h.clear()
    h["__list__"] = True


VALIDATION_CASES = [
    (_mut_negative_count, ("negative count", "step 1", "layer 0", "expert 0")),
    (_mut_assignment_sum, ("step 2, layer 1", "assignments", "tokens_forwarded x top_k")),
    (_mut_version, ("schema version 2",)),
    (_mut_mode, ("generation.mode", "speculative")),
    (_mut_shape_vs_header, ("disagrees with its header", "9 experts")),
    (_mut_context, ("step 3", "context_tokens smaller than the tokens forwarded per sequence")),
    (_mut_kind, ("kind", "unknown value 7")),
    (_mut_committed, ("commits 8 tokens", "gen_length 3")),
    (_mut_topk, ("topk_ids disagree with counts",)),
    (_mut_topk_range, ("topk_ids", "outside 0..7")),
    (_mut_topk_shape, ("topk_ids must be an integer array [24, 2, 2]",)),
    (_mut_no_token, ("step 0 forwards no token",)),
    (_mut_block, ("block has a value below -1",)),
    (_mut_negative_committed, ("tokens_committed has a negative value",)),
    (_mut_step_field_shape, ("field block must be an integer array of 6 steps",)),
    (_mut_counts_ndim, ("3-D integer array",)),
    (_mut_no_steps, ("no steps",)),
    (_mut_lacks_model, ("lacks model",)),
    (_mut_lacks_top_k, ("lacks model.top_k",)),
    (_mut_topk_exceeds, ("top_k exceeds",)),
    (_mut_block_length, ("block_length",)),
    (_mut_origin, ("origin.kind",)),
]


@pytest.mark.parametrize("mutate,needles", VALIDATION_CASES, ids=[m.__name__[5:] for m, _ in VALIDATION_CASES])
def test_validation_error_from_file(tmp_path, tiny_trace_factory, mutate, needles):
    header, arrays = _parts(tiny_trace_factory())
    mutate(header, arrays)
    path = tmp_path / "bad.npz"
    if header == {"__list__": True}:
        _write_raw(path, None, arrays, header_bytes=b"[1, 2, 3]")
        needles = ("not a JSON object",)
    else:
        _write_raw(path, header, arrays)
    with pytest.raises(TideError) as ei:
        read_trace(path)
    _one_line_error(ei, str(path), *needles)


@pytest.mark.parametrize("mutate,needles", VALIDATION_CASES[:9], ids=[m.__name__[5:] for m, _ in VALIDATION_CASES[:9]])
def test_validation_error_in_memory(tiny_trace_factory, mutate, needles):
    header, arrays = _parts(tiny_trace_factory())
    mutate(header, arrays)
    trace = Trace(header=header, **arrays)
    with pytest.raises(TideError) as ei:
        validate_trace(trace)
    _one_line_error(ei, *needles)


def test_validate_header_not_object():
    with pytest.raises(TideError) as ei:
        validate_header([1, 2])
    _one_line_error(ei, "not a JSON object")


# ---- shape against the model -----------------------------------------------------------------------------

def test_shape_vs_model(tmp_path, tiny_trace_factory, tiny_model):
    trace = tiny_trace_factory()
    mini = ModelSpec.load("llada2.0-mini")
    with pytest.raises(TideError) as ei:
        check_model_match(trace, mini)
    _one_line_error(ei, "does not match model llada2.0-mini", "2 MoE layers, 8 experts, top-2",
                    "19 MoE layers, 256 experts, top-8")
    with pytest.raises(TideError) as ei:
        validate_trace(trace, mini)
    _one_line_error(ei, "does not match model")
    path = write_trace(trace, tmp_path / "t.npz")
    with pytest.raises(TideError) as ei:
        read_trace(path, model=mini)
    _one_line_error(ei, str(path), "does not match model llada2.0-mini")
    check_model_match(trace, tiny_model)  # matches: no error


def test_shape_vs_model_top_k_only(tiny_trace_factory, tiny_model):
    other = ModelSpec.from_config({**tiny_model.raw_config, "num_experts_per_tok": 3}, name="tiny-top3")
    with pytest.raises(TideError) as ei:
        check_model_match(tiny_trace_factory(), other)
    _one_line_error(ei, "top-2", "tiny-top3", "top-3")


# ---- file-level errors -----------------------------------------------------------------------------------

def test_missing_array(tmp_path, tiny_trace_factory):
    header, arrays = _parts(tiny_trace_factory())
    del arrays["context_tokens"]
    del arrays["kind"]
    _write_raw(tmp_path / "t.npz", header, arrays)
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path / "t.npz")
    _one_line_error(ei, "missing array(s) context_tokens, kind")


def test_missing_header(tmp_path, tiny_trace_factory):
    _, arrays = _parts(tiny_trace_factory())
    with open(tmp_path / "t.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path / "t.npz")
    _one_line_error(ei, "missing array(s) header")


@pytest.mark.parametrize("field,dtype,needle", [
    ("counts", np.float32, "counts have dtype float32"),
    ("tokens_forwarded", np.float64, "field tokens_forwarded has dtype float64"),
    ("kind", "m8[s]", "field kind has dtype timedelta64"),
    ("topk_ids", np.float32, "topk_ids have dtype float32"),
    ("block", "U3", "field block has dtype <U3"),
])
def test_wrong_dtype(tmp_path, tiny_trace_factory, field, dtype, needle):
    header, arrays = _parts(tiny_trace_factory())
    arrays[field] = arrays[field].astype(dtype)
    _write_raw(tmp_path / "t.npz", header, arrays)
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path / "t.npz")
    _one_line_error(ei, needle)


def test_wider_integer_dtypes_are_accepted(tmp_path, tiny_trace_factory):
    trace = tiny_trace_factory()
    header, arrays = _parts(trace)
    arrays = {n: a.astype(np.int64) for n, a in arrays.items()}
    _write_raw(tmp_path / "t.npz", header, arrays)
    _assert_same(trace, read_trace(tmp_path / "t.npz"))


@pytest.mark.parametrize("field,value", [("counts", 2**32 + 1), ("tokens_forwarded", 2**32 + 4),
                                         ("kind", 256 + 3), ("counts", -(2**40)), ("topk_ids", 2**16 + 1)])
def test_values_that_do_not_fit_the_schema_dtype(tmp_path, tiny_trace_factory, field, value):
    """A wide integer that would wrap around when cast to the schema's dtype is refused, not wrapped."""
    header, arrays = _parts(tiny_trace_factory())
    a = arrays[field].astype(np.int64)
    a.flat[0] = value
    arrays[field] = a
    _write_raw(tmp_path / "t.npz", header, arrays)
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path / "t.npz")
    _one_line_error(ei, field)


@pytest.mark.parametrize("raw,needle", [
    (b"{not json", "header is not valid JSON"),
    (b"\xff\xfe\x00", "header is not valid JSON"),
    (b"1" * 5000, "header is not valid JSON"),      # int too long for Python's str-to-int limit
    (b"[" * 100000, "header is not valid JSON"),    # nested deeper than the recursion limit
    (b"[1, 2]", "not a JSON object"),
])
def test_header_not_json(tmp_path, tiny_trace_factory, raw, needle):
    _, arrays = _parts(tiny_trace_factory())
    _write_raw(tmp_path / "t.npz", None, arrays, header_bytes=raw)
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path / "t.npz")
    _one_line_error(ei, needle)


def test_header_not_bytes(tmp_path, tiny_trace_factory):
    header, arrays = _parts(tiny_trace_factory())
    with open(tmp_path / "t.npz", "wb") as f:
        np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8).astype(np.int32), **arrays)
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path / "t.npz")
    _one_line_error(ei, "header is not a byte array")


def test_not_a_zip(tmp_path):
    (tmp_path / "t.npz").write_bytes(b"this is not a zip file at all")
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path / "t.npz")
    _one_line_error(ei, "not a readable trace file")


def test_no_such_file_and_directory(tmp_path):
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path / "nope.npz")
    _one_line_error(ei, "no such file")
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path)
    _one_line_error(ei, "is a directory")


def test_pickled_member_refused(tmp_path, tiny_trace_factory):
    header, arrays = _parts(tiny_trace_factory())
    arrays["counts"] = np.array([{"evil": 1}], dtype=object)
    buf = io.BytesIO()
    members = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays}
    np.savez(buf, **members)
    (tmp_path / "t.npz").write_bytes(buf.getvalue())
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path / "t.npz")
    _one_line_error(ei, "Python objects")


def test_member_with_lying_shape(tmp_path, tiny_trace_factory):
    """A member whose .npy header claims a huge shape is refused without allocating it."""
    header, arrays = _parts(tiny_trace_factory())
    path = tmp_path / "t.npz"
    _write_raw(path, header, arrays)
    # rewrite counts.npy with a header claiming 10^12 elements but the original payload
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i4", "fortran_order": False, "shape": (10**6, 10**6)})
    payload = arrays["counts"].astype("<i4").tobytes()
    members["counts.npy"] = buf.getvalue() + payload
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(TideError) as ei:
        read_trace(path)
    _one_line_error(ei, "counts.npy")


def test_extra_members_ignored(tmp_path, tiny_trace_factory):
    trace = tiny_trace_factory()
    path = write_trace(trace, tmp_path / "t.npz")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("README.txt", "notes")
        zf.writestr("extra.npy", b"garbage that is never parsed")
    _assert_same(trace, read_trace(path))


def test_header_not_serialisable(tmp_path, tiny_trace_factory):
    trace = tiny_trace_factory()
    header = copy.deepcopy(trace.header)
    header["origin"]["seed"] = np.int64(3)
    with pytest.raises(TideError) as ei:
        write_trace(dataclasses.replace(trace, header=header), tmp_path / "t.npz")
    _one_line_error(ei, "not JSON-serialisable")
    assert not (tmp_path / "t.npz").exists()


def test_written_file_permissions_follow_umask(tmp_path, tiny_trace_factory):
    old = os.umask(0o022)
    try:
        path = write_trace(tiny_trace_factory(), tmp_path / "t.npz")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("value", [-1, 10**6, 2.5, True])
def test_output_tokens_must_be_a_count_within_the_committed(value):
    from traces.synthetic import default_config, generate

    tiny = ModelSpec.load("llada2-tiny")
    trace = generate(tiny, default_config(tiny, gen_length=64, seed=0, eos_stop=False))
    assert trace.generated_tokens == 64
    bad = dataclasses.replace(trace, header={**trace.header, "generation": {**trace.header["generation"],
                                                                              "output_tokens": value}})
    with pytest.raises(TideError, match=r"output_tokens must be an integer in \[0, 64\]") as exc:
        validate_trace(bad)
    assert "\n" not in str(exc.value)
    fewer = dataclasses.replace(trace, header={**trace.header, "generation": {**trace.header["generation"],
                                                                                "output_tokens": 40}})
    assert fewer.generated_tokens == 40 and int(fewer.tokens_committed.sum()) == 64  # tokens/s counts the output


@pytest.mark.parametrize("value", [0, -2, 1.5, True])
def test_sequences_must_be_a_positive_count(value, tiny_trace_factory):
    trace = tiny_trace_factory()
    bad = dataclasses.replace(trace, header={**trace.header, "generation": {**trace.header["generation"],
                                                                              "sequences": value}})
    with pytest.raises(TideError, match="generation.sequences must be an integer >= 1") as exc:
        validate_trace(bad)
    assert "\n" not in str(exc.value)
