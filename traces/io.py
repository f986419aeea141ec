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
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import TideError
from traces.schema import STEP_DTYPES, STEP_FIELDS, Trace
from traces.validate import validate_trace

_MAX_MEMBER_BYTES = 8 * 2**30  # refuse members that claim more than this uncompressed
_NEEDED = ("header", "counts", *STEP_FIELDS)


def atomic_write_bytes(path: str | Path, writer: Any) -> None:
    """Call ``writer(fileobj)`` on a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Validate and write ``trace`` atomically; returns the path written."""
    validate_trace(trace)
    path = Path(path)
    arrays = {"header": np.frombuffer(json.dumps(trace.header, sort_keys=True).encode(), dtype=np.uint8)}
    arrays.update(trace.arrays())
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, origin: str) -> np.ndarray:
    if info.file_size > _MAX_MEMBER_BYTES:
        raise TideError(f"trace {origin}: member {info.filename} claims {info.file_size} bytes, too large")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise TideError(f"trace {origin}: member {info.filename} has npy version {version}")
        if dtype.hasobject:
            raise TideError(f"trace {origin}: member {info.filename} holds Python objects (refused)")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = count * dtype.itemsize
        data = f.read(nbytes + 1)
    if len(data) != nbytes:
        raise TideError(f"trace {origin}: member {info.filename} is truncated or its shape {shape} is wrong")
    arr = np.frombuffer(data, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C").copy()


def read_trace(path: str | Path, model: Any = None) -> Trace:
    """Read and validate a trace; with ``model`` (a ModelSpec) also check that the shapes match it."""
    origin = str(path)
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
        raise TideError(f"trace {origin}: is a directory") from None
    except PermissionError:
        raise TideError(f"trace {origin}: permission denied") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, OSError, KeyError,
            NotImplementedError, RuntimeError, OverflowError, MemoryError) as exc:
        raise TideError(f"trace {origin}: not a readable trace file ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    header_bytes = arrays.pop("header")
    if header_bytes.dtype != np.uint8 or header_bytes.ndim != 1:
        raise TideError(f"trace {origin}: header is not a byte array")
    try:
        header = json.loads(header_bytes.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TideError(f"trace {origin}: header is not valid JSON ({exc})") from None
    for f in STEP_FIELDS:
        a = arrays[f]
        if not np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_:
            raise TideError(f"trace {origin}: field {f} has dtype {a.dtype}, expected integers")
        arrays[f] = a.astype(STEP_DTYPES[f])
    counts = arrays["counts"]
    if not np.issubdtype(counts.dtype, np.integer):
        raise TideError(f"trace {origin}: counts have dtype {counts.dtype}, expected integers")
    if counts.dtype.itemsize > 4 and counts.size and (counts.max() > 2**31 - 1):
        raise TideError(f"trace {origin}: counts exceed int32")
    arrays["counts"] = counts.astype(np.int32)
    topk = arrays.get("topk_ids")
    if topk is not None and not np.issubdtype(topk.dtype, np.integer):
        raise TideError(f"trace {origin}: topk_ids have dtype {topk.dtype}, expected integers")
    trace = Trace(header=header, **arrays)
    try:
        validate_trace(trace, model)
    except TideError as exc:
        raise TideError(f"trace {origin}: {exc}") from None
    return trace
