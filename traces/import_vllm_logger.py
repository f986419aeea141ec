"""Command line: merge vLLM-MoE-Logger per-layer routing logs into one trace.

    python -m traces.import_vllm_logger LOG.jsonl... (--model CONFIG_OR_PRESET | --experts E --top-k K)
        --out TRACE.npz [--drop-incomplete] [--skip-calls N] [--layer-map L,L,...] [--with-topk]

The format, the warm-up rule and the trace's fields are in :mod:`traces.vllm_logger`. The importer needs only
the routed experts per layer and top-k: ``--model`` takes them from a model spec (a preset or a llada2_moe
config.json); ``--experts E --top-k K`` gives them directly, for models the spec does not describe (Qwen1.5-MoE
of the shipped logs: ``--experts 60 --top-k 4``), and the trace is named after the logs' ``model_id``. Either
way the trace has one MoE layer per logged layer, so the simulator replays it only with a model of that shape;
``python -m traces.stats`` reads it as is. Bad input prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from offload.cli import add_model
from offload.errors import run_cli
from offload.model_spec import ModelSpec
from offload.trace import Trace
from traces.importers import run_importer
from traces.vllm_logger import RouterShape, import_vllm_logger


def _layer_list(text: str) -> list[int]:
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None
    return layers


def _options(ap: Any) -> None:
    add_model(ap, what=" (needs only its experts and top-k; or give --experts and --top-k)")
    ap.add_argument("--experts", type=int, default=None, help="routed experts per MoE layer (instead of --model)")
    ap.add_argument("--top-k", type=int, default=None, help="experts per token (instead of --model)")
    ap.add_argument("--drop-incomplete", action="store_true",
                    help="drop the forward calls whose row counts differ between the logs instead of refusing")
    ap.add_argument("--skip-calls", type=int, default=None,
                    help="forward calls to discard at the start of every log (default: detect vLLM's warm-up)")
    ap.add_argument("--layer-map", type=_layer_list, default=None,
                    help="logged layer of each trace MoE layer, comma-separated; a layer may repeat "
                         "(default: the logged layers, ascending)")
    ap.add_argument("--with-topk", action="store_true",
                    help="keep per-token expert ids (row r of a call in every log taken as one token)")


def _read(args: Any, ap: Any) -> Trace:
    shape_given = args.experts is not None or args.top_k is not None
    if args.model is not None and shape_given:
        ap.error("give --model or --experts with --top-k, not both")
    if args.model is None and (args.experts is None or args.top_k is None):
        ap.error("give --model, or --experts and --top-k")
    model = ModelSpec.load(args.model) if args.model is not None else RouterShape(args.experts, args.top_k)
    return import_vllm_logger(args.logs, model, skip_calls=args.skip_calls, drop_incomplete=args.drop_incomplete,
                              layer_map=args.layer_map, keep_topk=args.with_topk)


def main(argv: Sequence[str] | None = None) -> int:
    return run_importer(argv, "traces.import_vllm_logger", __doc__, "logs",
                        "vLLM-MoE-Logger JSONL files, one or more logged layers each", _options, _read,
                        "trace layers = logged layers {layers}; warm-up calls skipped per logged layer "
                        "{warmup_calls}; dropped steps {dropped_steps}", nargs="+")


if __name__ == "__main__":
    run_cli(main)
