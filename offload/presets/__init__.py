"""Packaged presets (``models/``, ``hardware/``, ``executors/``) and the one loader of "a preset name or a JSON
file" that model specs, hardware profiles and executor profiles share."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from offload.errors import TideError


def preset_or_file(key: str, presets: Mapping[str, str], package: str, what: str,
                   malformed: str | None = None) -> tuple[Any, str]:
    """(parsed JSON, origin) of preset ``key`` (a file of ``package``) or of the JSON file at path ``key``. A
    one-line TideError names an unknown name, a directory, an unreadable file or malformed JSON (``malformed``:
    how that message names the file, default "malformed <what>")."""
    if key in presets:
        return json.loads(resources.files(package).joinpath(presets[key]).read_text()), key
    path = Path(key)
    if path.is_dir():
        raise TideError(f"{what} {key} is a directory, not a preset ({', '.join(presets)}) or a JSON file")
    if not path.is_file():
        raise TideError(f"unknown {what} {key!r}: not a preset ({', '.join(presets)}) and no such file")
    try:
        return json.loads(path.read_text()), str(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TideError(f"{malformed or 'malformed ' + what} {path}: {exc}") from None
    except OSError as exc:
        raise TideError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
