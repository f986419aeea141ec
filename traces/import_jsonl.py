"""Command line: import a JSONL decode routing log as a trace.

    python -m traces.import_jsonl LOG.jsonl --model llada2.0-mini --out TRACE.npz [--layer-offset 1]
        [--first-is-prefill] [--no-topk-ids] [--drop-incomplete]

See :func:`traces.importers.import_jsonl` for the log format. Bad input prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

from typing import Sequence

from offload.errors import run_cli
from traces.importers import import_jsonl, run_row_importer


def main(argv: Sequence[str] | None = None) -> int:
    return run_row_importer(argv, "traces.import_jsonl", __doc__, "log",
                            'JSONL routing log: rows {"step", "layer", "experts"}', import_jsonl)


if __name__ == "__main__":
    run_cli(main)
