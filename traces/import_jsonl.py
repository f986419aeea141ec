"""Command line: import a JSONL decode routing log as a trace.

    python -m traces.import_jsonl LOG.jsonl --model llada2.0-mini --out TRACE.npz [--layer-offset 1]
        [--first-is-prefill] [--no-topk-ids] [--drop-incomplete]

See :func:`traces.importers.import_jsonl` for the log format. Bad input prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

from typing import Sequence

from offload.cli import add_model, Parser
from offload.errors import run_cli
from offload.model_spec import ModelSpec
from traces.importers import import_jsonl, trace_summary
from offload.trace_io import write_trace


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="python -m traces.import_jsonl", description=__doc__.splitlines()[0])
    ap.add_argument("log", help="JSONL routing log: rows {\"step\", \"layer\", \"experts\"}")
    add_model(ap, required=True)
    ap.add_argument("--out", required=True, help="trace file to write (.npz)")
    ap.add_argument("--layer-offset", type=int, default=0,
                    help="subtracted from the log's layer numbers to give MoE layers 0..L-1 "
                         "(e.g. first_k_dense_replace when the log numbers all decoder layers)")
    ap.add_argument("--first-is-prefill", action="store_true",
                    help="the first step is the prompt prefill (kind 2), not a decode step")
    ap.add_argument("--no-topk-ids", action="store_true", help="do not keep per-token expert ids")
    ap.add_argument("--drop-incomplete", action="store_true",
                    help="drop the steps where some MoE layer has fewer tokens than another instead of refusing "
                         "(the number dropped is printed)")
    args = ap.parse_args(argv)
    model = ModelSpec.load(args.model)
    trace = import_jsonl(args.log, model, layer_offset=args.layer_offset, first_is_prefill=args.first_is_prefill,
                         keep_topk=not args.no_topk_ids, drop_incomplete=args.drop_incomplete)
    out = write_trace(trace, args.out)
    print(f"wrote {out}: {trace_summary(trace)}; dropped {trace.header['origin']['dropped_steps']} incomplete "
          "step(s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
