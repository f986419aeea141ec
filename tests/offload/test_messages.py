"""One-line messages that name what the user gave: atomic writes name the destination (never the temporary
file), inputs that are folders say so, compare names --model, and a closed stdout ends a CLI quietly."""
from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from offload.atomic_io import atomic_write_bytes, atomic_write_text
from offload.errors import TideError, run_cli
from offload.trace_io import read_trace, write_trace

ROOT = Path(__file__).resolve().parents[2]


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and ".tmp" not in msg, msg
    return msg


# ---- atomic writes -----------------------------------------------------------------------------------------

def test_write_onto_a_directory_names_it(tmp_path):
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(TideError) as ei:
        atomic_write_text(target, "x")
    assert _one_line(ei.value) == f"cannot write {target}: it is a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]  # no temporary file left behind


def test_write_below_a_file_names_the_file(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    target = blocker / "sub" / "x.json"
    with pytest.raises(TideError) as ei:
        atomic_write_text(target, "x")
    assert _one_line(ei.value) == f"cannot write {target}: {blocker} is a file, not a directory"


def test_write_creates_missing_folders(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    atomic_write_text(target, "x")
    assert target.read_text() == "x"


def test_file_system_error_while_writing_names_the_destination(tmp_path):
    def full_disk(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "x.bin"
    with pytest.raises(TideError) as ei:
        atomic_write_bytes(target, full_disk)
    assert _one_line(ei.value) == f"cannot write {target}: no space left on device"
    assert list(tmp_path.iterdir()) == []


def test_writer_errors_of_other_files_pass_through(tmp_path):
    """An OSError about another file (the writer reading its input) is not a failure to write the target."""
    def reads_missing(f):
        open(tmp_path / "missing-input")

    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "x.bin", reads_missing)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_write_into_a_read_only_folder_says_permission_denied(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(TideError) as ei:
            atomic_write_text(folder / "x.json", "x")
    finally:
        folder.chmod(0o700)
    assert _one_line(ei.value) == f"cannot write {folder / 'x.json'}: permission denied"


# ---- reading a directory -----------------------------------------------------------------------------------

def test_read_trace_of_a_directory_says_so(tmp_path):
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path)
    assert "is a directory" in _one_line(ei.value) and "no such file" not in str(ei.value)


def test_read_trace_of_a_directory_says_so_where_open_says_permission_denied(tmp_path, monkeypatch):
    """Windows refuses to open a folder with PermissionError: the message must still say it is a folder."""
    import zipfile

    def refuse(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(zipfile, "ZipFile", refuse)
    with pytest.raises(TideError) as ei:
        read_trace(tmp_path)
    assert "is a directory" in _one_line(ei.value)


def test_read_trace_below_a_file_names_the_file(tmp_path, tiny_trace_factory):
    path = write_trace(tiny_trace_factory(), tmp_path / "t.npz")
    with pytest.raises(TideError) as ei:
        read_trace(path / "x.npz")
    assert _one_line(ei.value) == f"trace {path / 'x.npz'}: no such file ({path} is a file, not a directory)"


# ---- validate.compare names --model -------------------------------------------------------------------------

def test_compare_names_the_model_given(tmp_path, monkeypatch, tiny_trace_factory):
    """A --model of another shape than the runs: the message names --model, not the profile's model record."""
    from offload.hardware import HardwareProfile
    from validate import compare

    run = SimpleNamespace(trace=tiny_trace_factory(), record=SimpleNamespace(dtype="bfloat16"),
                          source="res/runtime_results.json", name="tide [block-cache]", environment={})
    profile = dataclasses.replace(HardwareProfile.load("h100-pcie5"), model={"name": "llada2.0-mini"})
    monkeypatch.setattr(compare, "load_runs", lambda args: [run])
    monkeypatch.setattr(compare.HardwareProfile, "load", staticmethod(lambda path: profile))
    with pytest.raises(TideError) as ei:
        compare.main(["res", "--hardware", "p.json", "--model", "llada2-tiny", "--out", str(tmp_path / "o")])
    msg = _one_line(ei.value)
    assert "--model llada2-tiny" in msg and "llada2.0-mini" not in msg


def test_replay_accepts_the_model_the_runs_were_recorded_on(tiny_model, tiny_trace_factory):
    from offload.hardware import HardwareProfile
    from validate.replay import spec_for

    run = SimpleNamespace(trace=tiny_trace_factory(), record=SimpleNamespace(dtype="bfloat16"),
                          source="r", name="n")
    spec = spec_for(run, HardwareProfile.load("h100-pcie5"), tiny_model)
    assert spec.config_hash == run.trace.header["model"]["config_hash"]


# ---- a closed stdout ----------------------------------------------------------------------------------------

def test_closed_stdout_ends_quietly(tmp_path, tiny_trace_factory):
    """``python -m traces.stats T | head``: the reader has gone; exit 0, nothing on stderr."""
    path = write_trace(tiny_trace_factory(), tmp_path / "t.npz")
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write: deterministic, unlike a real `| head`
    try:
        proc = subprocess.run([sys.executable, "-m", "traces.stats", str(path), str(path), "--json"], cwd=ROOT,
                              stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_broken_pipe_of_another_stream_is_still_an_error(capsys):
    """A broken pipe to a program's own subprocess, with stdout fine, is a failure worth a message."""
    def main(argv):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    with pytest.raises(SystemExit) as ei:
        run_cli(main, [])
    assert ei.value.code == 2 and capsys.readouterr().err == "error: cannot access: Broken pipe\n"
