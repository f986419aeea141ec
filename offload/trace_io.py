"""Reading and writing trace files (``.npz``: a zip of .npy arrays plus the JSON header as bytes).

Layout: members ``header.npy`` (uint8, UTF-8 JSON), ``counts.npy``, one ``.npy`` per step field and
optionally ``topk_ids.npy``; compressed with zlib. Writes go to a temporary file in the target directory
that is fsync'ed and renamed over the target, so a crash never leaves a half-written trace.

Reading never trusts the file: each member's .npy header is parsed first and its declared shape must match
its actual size before any array is allocated (a corrupted shape cannot trigger a huge allocation), pickled
objects are refused, and every failure becomes a one-line :class:`TideError` naming the file.
"""
from __future__ import annotations

import json
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from offload.atomic_io import atomic_write_bytes
from offload.errors import TideError
from offload.trace import STEP_DTYPES, STEP_FIELDS, Trace
from offload.trace_check import validate_trace

_MAX_MEMBER_BYTES = 8 * 2**30  # refuse members that claim more than this uncompressed
_NEEDED = ("header", "counts", *STEP_FIELDS)


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Validate and write ``trace`` atomically; returns the path written."""
    validate_trace(trace)
    path = Path(path)
    try:
        text = json.dumps(trace.header, sort_keys=True)
    except (TypeError, ValueError) as exc:  # e.g. a numpy integer in a free header field
        raise TideError(f"trace header is not JSON-serialisable: {exc}".replace("\n", " ")) from None
    arrays = {"header": np.frombuffer(text.encode(), dtype=np.uint8)}
    arrays.update(trace.arrays())
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, origin: str) -> np.ndarray:
    if info.file_size > _MAX_MEMBER_BYTES:
        raise TideError(f"trace {origin}: member {info.filename} claims {info.file_size} bytes, too large")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise TideError(f"trace {origin}: member {info.filename} has npy version {version}")
        try:
            # numpy parses the header dict with ast/tokenize: a corrupted one can raise almost anything
            # (ValueError, SyntaxError, tokenize.TokenError, TypeError, ...); the zip's own errors pass through.
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError):
            raise
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parse failure is a bad file
            raise TideError(f"trace {origin}: member {info.filename} has a malformed .npy header "
                            f"({type(exc).__name__})") from None
        if dtype.hasobject:
            raise TideError(f"trace {origin}: member {info.filename} holds Python objects (refused)")
        if dtype.itemsize == 0 or dtype.shape or dtype.names is not None:
            raise TideError(f"trace {origin}: member {info.filename} has unsupported dtype {dtype}")
        if any(not isinstance(n, int) or n < 0 for n in shape):
            raise TideError(f"trace {origin}: member {info.filename} has a bad shape {shape}")
        count = math.prod(shape)  # exact (Python ints): a corrupted shape cannot overflow into a small one
        nbytes = count * dtype.itemsize
        if nbytes > info.file_size:
            raise TideError(f"trace {origin}: member {info.filename} is truncated or its shape {shape} is wrong")
        data = f.read(nbytes + 1)
    if len(data) != nbytes:
        raise TideError(f"trace {origin}: member {info.filename} is truncated or its shape {shape} is wrong")
    arr = np.frombuffer(data, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C").copy()


def read_trace(path: str | Path, model: Any = None) -> Trace:
    """Read and validate a trace; with ``model`` (a ModelSpec) also check that the shapes match it."""
    origin = str(path)
    # asked first: opening a directory is IsADirectoryError on Linux but PermissionError on Windows, and a
    # folder passed for a file is a common slip whose message should say exactly that
    if Path(path).is_dir():
        raise TideError(f"trace {origin}: is a directory, not a trace file (.npz)")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {Path(i.filename).stem: i for i in zf.infolist() if i.filename.endswith(".npy")}
            missing = [n for n in _NEEDED if n not in members]
            if missing:
                raise TideError(f"trace {origin}: missing array(s) {', '.join(missing)}")
            arrays = {n: _read_member(zf, members[n], origin) for n in (*_NEEDED, "topk_ids") if n in members}
    except TideError:
        raise
    except FileNotFoundError:
        raise TideError(f"trace {origin}: no such file") from None
    except IsADirectoryError:
        raise TideError(f"trace {origin}: is a directory, not a trace file (.npz)") from None
    except NotADirectoryError:  # a file named as a folder on the way, e.g. t.npz/x.npz
        blocker = next((p for p in Path(path).parents if p.is_file()), Path(path).parent)
        raise TideError(f"trace {origin}: no such file ({blocker} is a file, not a directory)") from None
    except PermissionError:
        raise TideError(f"trace {origin}: permission denied") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, ValueError, OSError,
            KeyError, NotImplementedError, RuntimeError, OverflowError, MemoryError, SyntaxError) as exc:
        raise TideError(f"trace {origin}: not a readable trace file ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    header_bytes = arrays.pop("header")
    if header_bytes.dtype != np.uint8 or header_bytes.ndim != 1:
        raise TideError(f"trace {origin}: header is not a byte array")
    try:
        header = json.loads(header_bytes.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise TideError(f"trace {origin}: header is not valid JSON ({type(exc).__name__}: {exc})"
                        .replace("\n", " ")) from None
    for f in STEP_FIELDS:
        arrays[f] = _cast(arrays[f], np.dtype(STEP_DTYPES[f]), f"field {f}", origin, allow_bool=True)
    arrays["counts"] = _cast(arrays["counts"], np.dtype(np.int32), "counts", origin)
    if "topk_ids" in arrays:
        topk = _cast(arrays["topk_ids"], None, "topk_ids", origin)
        info16 = np.iinfo(np.int16)
        if topk.size == 0 or (topk.min() >= info16.min and topk.max() <= info16.max):
            topk = topk.astype(np.int16)  # the schema's dtype; ids outside it are reported by validation
        arrays["topk_ids"] = topk
    trace = Trace(header=header, **arrays)
    try:
        validate_trace(trace, model)
    except TideError as exc:
        raise TideError(f"trace {origin}: {exc}") from None
    return trace


def _cast(a: np.ndarray, dtype: np.dtype | None, what: str, origin: str, allow_bool: bool = False) -> np.ndarray:
    """Integers (or bools) only, cast to ``dtype`` only when every value fits: a wide value never wraps."""
    kinds = "iub" if allow_bool else "iu"
    if a.dtype.kind not in kinds:
        verb = "have" if what in ("counts", "topk_ids") else "has"
        raise TideError(f"trace {origin}: {what} {verb} dtype {a.dtype}, expected integers")
    if dtype is None:
        return a
    if a.size and a.dtype.kind != "b":
        info = np.iinfo(dtype)
        lo, hi = a.min(), a.max()
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise TideError(f"trace {origin}: {what} holds {int(bad)}, outside the {dtype} range of the schema")
    return a.astype(dtype)
