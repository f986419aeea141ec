"""Property tests: reading a damaged or hostile trace file either yields a valid trace or a one-line TideError.

Never another exception, never a hang (each example has a deadline), never a huge allocation.
"""
from __future__ import annotations

import atexit
import functools
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload.errors import TideError
from offload.model_spec import ModelSpec
from offload.trace_io import read_trace, write_trace
from offload.trace_check import validate_trace

from conftest import TINY_CONFIG, build_tiny_trace  # tests/ is on sys.path through its rootdir conftest

# TIDE_FUZZ_EXAMPLES raises the example count for a longer hunt (default 150 per property, all < 30 s).
FUZZ = settings(max_examples=int(os.environ.get("TIDE_FUZZ_EXAMPLES", "150")), deadline=2000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_DIR = Path(tempfile.mkdtemp(prefix="tide-fuzz-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _valid() -> tuple[dict, dict[str, np.ndarray], bytes, bytes]:
    """(header, arrays, compressed file bytes as write_trace writes them, the same stored uncompressed)."""
    trace = build_tiny_trace(ModelSpec.from_config(TINY_CONFIG, name="tiny"), with_topk=True)
    path = write_trace(trace, _DIR / "valid.npz")
    members = {"header": np.frombuffer(json.dumps(trace.header).encode(), np.uint8), **trace.arrays()}
    buf = io.BytesIO()
    np.savez(buf, **members)
    return trace.header, trace.arrays(), path.read_bytes(), buf.getvalue()


def _check_bytes(data: bytes) -> None:
    path = _DIR / "case.npz"
    path.write_bytes(data)
    try:
        trace = read_trace(path)
    except TideError as exc:
        assert "\n" not in str(exc)
        return
    validate_trace(trace)  # whatever was accepted must be a valid trace


def _base(which: int) -> bytes:
    return _valid()[2 + which]


def test_valid_bases_read():
    for which in (0, 1):
        _check_bytes(_base(which))
        read_trace(_DIR / "case.npz")


# (a) truncation at any offset ------------------------------------------------------------------------------

@FUZZ
@given(which=st.integers(0, 1), frac=st.floats(0, 1, exclude_max=True))
def test_truncated(which, frac):
    data = _base(which)
    _check_bytes(data[: int(frac * len(data))])


def test_truncated_everywhere_near_the_end():
    """The central directory sits at the end: every cut in the last 200 bytes is checked."""
    for which in (0, 1):
        data = _base(which)
        for cut in range(len(data) - 200, len(data)):
            _check_bytes(data[:cut])


# (b) byte flips / overwrites -------------------------------------------------------------------------------

@FUZZ
@given(which=st.integers(0, 1),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.booleans()),
                      min_size=1, max_size=12))
def test_flipped_bytes(which, edits):
    data = bytearray(_base(which))
    for where, value, xor in edits:
        i = int(where * len(data))
        data[i] = data[i] ^ (value or 1) if xor else value
    _check_bytes(bytes(data))


# (c) slices replaced by random bytes -----------------------------------------------------------------------

@FUZZ
@given(which=st.integers(0, 1),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 64), st.binary(max_size=64)),
                      min_size=1, max_size=4))
def test_replaced_slices(which, edits):
    data = _base(which)
    for where, length, repl in edits:
        i = int(where * len(data))
        data = data[:i] + repl + data[i + length:]
    _check_bytes(data)


# (d) random bytes ------------------------------------------------------------------------------------------

@FUZZ
@given(prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY"]), body=st.binary(max_size=2048))
def test_random_bytes(prefix, body):
    _check_bytes(prefix + body)


# (e) a valid zip whose .npy members have corrupted headers or shapes ---------------------------------------

_DESCRS = ["<i4", ">i4", "<i8", "<u8", "|u1", "|i1", "|b1", "<f8", "<m8[s]", "<M8[D]", "<U3", "|S0", "|V0", "|V8",
           "<c16", "O", "<i4,<i4", [("a", "<i4")], ("<i4", (2,)), "bogus", 7, None]
_SHAPES = st.one_of(
    st.tuples(), st.lists(st.integers(-3, 50), max_size=4).map(tuple),
    st.lists(st.sampled_from([0, 1, 2**31, 2**32, 2**62, 2**63, 2**64 + 1, 10**30, -1]), min_size=1,
             max_size=3).map(tuple),
    st.just("not a shape"), st.just((1.5,)), st.just(None),
)


def _npy_header(d: dict, version: int) -> bytes:
    text = repr(d).encode("latin1")
    if version == 1:
        pad = 64 - (10 + len(text) + 1) % 64
        body = text + b" " * pad + b"\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body
    pad = 64 - (12 + len(text) + 1) % 64
    body = text + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + len(body).to_bytes(4, "little") + body


@st.composite
def _corrupt_member(draw, arr: np.ndarray) -> bytes:
    mode = draw(st.sampled_from(["dict", "raw_header", "payload", "version"]))
    good = io.BytesIO()
    np.lib.format.write_array(good, arr, allow_pickle=False)
    good = good.getvalue()
    if mode == "dict":
        d = {"descr": arr.dtype.str, "fortran_order": False, "shape": arr.shape}
        key = draw(st.sampled_from(["descr", "fortran_order", "shape", "extra", "missing"]))
        if key == "descr":
            d["descr"] = draw(st.sampled_from(_DESCRS))
        elif key == "fortran_order":
            d["fortran_order"] = draw(st.sampled_from([True, 1, "yes", None]))
        elif key == "shape":
            d["shape"] = draw(_SHAPES)
        elif key == "extra":
            d["extra"] = 1
        else:
            del d[draw(st.sampled_from(["descr", "fortran_order", "shape"]))]
        payload = draw(st.sampled_from([arr.tobytes(), b"", arr.tobytes()[: arr.nbytes // 2], arr.tobytes() * 2]))
        return _npy_header(d, draw(st.sampled_from([1, 2, 3]))) + payload
    if mode == "raw_header":
        hlen = 10 + int.from_bytes(good[8:10], "little")
        i = draw(st.integers(0, hlen - 1))
        return good[:i] + draw(st.binary(min_size=1, max_size=20)) + good[i + 1:]
    if mode == "payload":
        hlen = 10 + int.from_bytes(good[8:10], "little")
        return good[:hlen] + draw(st.binary(max_size=256))
    return b"\x93NUMPY" + bytes([draw(st.integers(0, 255)), draw(st.integers(0, 255))]) + good[8:]


@FUZZ
@given(data=st.data(), stored=st.booleans())
def test_corrupted_npy_members(data, stored):
    header, arrays, _, _ = _valid()
    members = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays}
    names = data.draw(st.lists(st.sampled_from(sorted(members)), min_size=1, max_size=3, unique=True))
    blobs = {}
    for name, arr in members.items():
        if name in names:
            blobs[name] = data.draw(_corrupt_member(arr))
        else:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            blobs[name] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as zf:
        for name, blob in blobs.items():
            zf.writestr(f"{name}.npy", blob)
    _check_bytes(buf.getvalue())


# (f) well-formed arrays holding wrong values ---------------------------------------------------------------

_INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.bool_]
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def _header_paths(h: dict, prefix=()):
    for k, v in h.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _header_paths(v, (*prefix, k))


@FUZZ
@given(data=st.data())
def test_wrong_values(data):
    header, arrays, _, _ = _valid()
    header = json.loads(json.dumps(header))
    arrays = {n: a.copy() for n, a in arrays.items()}
    for _ in range(data.draw(st.integers(1, 3))):
        what = data.draw(st.sampled_from(["value", "dtype", "shape", "drop", "header"]))
        name = data.draw(st.sampled_from(sorted(arrays)))
        a = arrays[name]
        if what == "value" and a.size:
            a = a.astype(np.int64)
            i = data.draw(st.integers(0, a.size - 1))
            a.flat[i] = data.draw(st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 300))
        elif what == "dtype":
            a = a.astype(data.draw(st.sampled_from(_INT_DTYPES)))
        elif what == "shape":
            cut = data.draw(st.integers(0, max(a.shape[0], 1)))
            a = data.draw(st.sampled_from([a[:cut], a.reshape(-1), np.concatenate([a, a[:cut]]), a[..., None]]))
        elif what == "drop" and name != "counts":
            del arrays[name]
            continue
        elif what == "header":
            path = data.draw(st.sampled_from(list(_header_paths(header))))
            d = header
            for k in path[:-1]:
                d = d[k]
            if data.draw(st.booleans()):
                d[path[-1]] = data.draw(_JSONISH)
            else:
                del d[path[-1]]
        arrays[name] = a
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    _check_bytes(buf.getvalue())
