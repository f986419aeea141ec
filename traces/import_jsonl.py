"""Command line: import a JSONL decode routing log as a trace.

    python -m traces.import_jsonl LOG.jsonl --model llada2.0-mini --out TRACE.npz [--layer-offset 1]
        [--first-is-prefill] [--no-topk-ids] [--drop-incomplete]

See :func:`traces.importers.import_jsonl` for the log format. Bad input prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

from typing import Sequence

from offload.cli import Parser
from offload.errors import run_cli
from offload.model_spec import ModelSpec
from traces.importers import add_import_options, import_jsonl, import_options, write_imported


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="python -m traces.import_jsonl", description=__doc__.splitlines()[0])
    ap.add_argument("log", help="JSONL routing log: rows {\"step\", \"layer\", \"experts\"}")
    add_import_options(ap, "log")
    a = ap.parse_args(argv)
    write_imported(import_jsonl(a.log, ModelSpec.load(a.model), **import_options(a)), a.out)
    return 0


if __name__ == "__main__":
    run_cli(main)
