"""The README's quick start as commands: the fenced ``bash`` blocks under ``## Quick start``, in order.

Exactly two: set up and run the main job; set up and run the tests. ``.ci/run`` and ``benchmarks/first_hour.py``
both run them verbatim (with ``.venv`` replaced by a fresh temporary folder), so what CI proves and what the
first-hour page times are the commands a user copies. Standard library only: CI calls it before any virtual
environment exists.

    python3 benchmarks/readme_blocks.py [README.md]   # each block on one line, newlines as \\n (for bash)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
VENV = ".venv"  # the folder the README's venv line makes; runners substitute their own


class QuickStartError(ValueError):
    """The README's Quick start is not two bash blocks."""


def quick_start_blocks(readme: str | Path = README) -> tuple[str, str]:
    """(main job block, tests block) of ``readme``."""
    text = Path(readme).read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    blocks = re.findall(r"^```bash\n(.*?)^```", section.group(1) if section else "", re.S | re.M)
    if len(blocks) != 2:
        raise QuickStartError(
            f"{readme}: its Quick start must hold exactly two bash blocks (main job, tests); found {len(blocks)}"
        )
    return blocks[0].strip(), blocks[1].strip()


def in_venv(block: str, venv: str | Path) -> str:
    """``block`` with the README's ``.venv`` replaced by ``venv``."""
    return block.replace(VENV, str(venv))


def main(argv: list[str]) -> int:
    try:
        blocks = quick_start_blocks(argv[0] if argv else README)
    except (QuickStartError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for block in blocks:
        print(block.replace("\\", "\\\\").replace("\n", "\\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
