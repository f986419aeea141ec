"""validate.calibrate refuses non-positive time limits at once, in one line, exit status 2 (issue 17 item 6)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--max-seconds", "-1"], "--max-seconds must be a number of seconds > 0, got -1.0"),
        (["--max-seconds", "0"], "--max-seconds must be a number of seconds > 0"),
        (["--max-seconds", "nan"], "--max-seconds must be a number of seconds > 0"),
        (["--deadline-seconds", "-5"], "--deadline-seconds must be a number of seconds > 0"),
        (["--deadline-seconds", "inf"], "--deadline-seconds must be a number of seconds > 0"),
    ],
)
def test_calibrate_refuses_non_positive_limits(tmp_path, args, needle):
    out = tmp_path / "profile.json"
    p = subprocess.run(
        [sys.executable, "-m", "validate.calibrate", "--device", "cpu", "--quick", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = p.stderr.strip()
    assert p.returncode == 2 and err.startswith("error:") and "\n" not in err and needle in err, (p.returncode, err)
    assert not out.exists() and not out.with_suffix(".partial.json").exists()
