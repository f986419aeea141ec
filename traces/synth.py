"""Command line: write a synthetic routing trace (model and calibration: :mod:`traces.synthetic`).

    python -m traces.synth --model llada2.0-mini --mode block-cache --out TRACE.npz [--gen-length N]
        [--seed S] [--prompt-length P] [--block-length T] [--steps N] [--tokens-per-forward X]
        [--popularity-skew S] [--block-concentration A] [--temporal-correlation R] [--commit-correlation R]
        [--with-topk]

Options left out take the calibrated defaults for the model. Bad input prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

import time
from typing import Sequence

from offload.errors import run_cli
from offload.model_spec import ModelSpec
from offload.trace_io import write_trace
from offload.cli import DEFAULT_PROMPT_LENGTH, add_model, Parser
from offload.trace import DIFFUSION_MODES
from traces.synthetic import generate
from traces.synthetic_draws import synthetic_draw

# option name -> (SyntheticConfig field, type, help)
_OPTIONS = {
    "--gen-length": ("gen_length", int, "generated tokens, a multiple of the block length (default 1024)"),
    "--prompt-length": ("prompt_length", int, f"prompt tokens (default {DEFAULT_PROMPT_LENGTH})"),
    "--block-length": ("block_length", int, "tokens per block (default 32)"),
    "--steps": ("steps", int, "step budget per block; minimum commits per step = block length / steps (32)"),
    "--tokens-per-forward": ("tokens_per_forward", float,
                             "mean tokens committed per denoising forward (default: mini 2.55, flash 3.19)"),
    "--threshold": ("threshold", float, "decoder confidence threshold, recorded only (0.95)"),
    "--seed": ("seed", int, "random seed (default 0)"),
    "--popularity-skew": ("popularity_skew", float, "Zipf exponent of expert popularity per layer"),
    "--block-concentration": ("block_concentration", float, "Dirichlet concentration of a block's experts"),
    "--temporal-correlation": ("temporal_correlation", float, "per-step AR(1) coefficient of routing noise"),
    "--commit-correlation": ("commit_correlation", float, "extra AR(1) coefficient when a token commits"),
    "--skew-depth": ("skew_depth", float, "how much the skew rises with depth"),
    "--concentration-depth": ("concentration_depth", float, "how much the concentration falls with depth"),
    "--drift-sd": ("drift_sd", float, "stationary sd of the log-popularity drift across blocks"),
    "--drift-correlation": ("drift_correlation", float, "its AR(1) coefficient from one block to the next"),
    "--content-share": ("content_share", float, "share of a committed token's routing moved to content experts"),
    "--content-concentration": ("content_concentration", float, "Dirichlet concentration of the content experts"),
    "--mask-share": ("mask_share", float, "share of a masked token's routing on the layer's mask experts"),
    "--mask-experts": ("mask_experts", int, "mask experts per layer"),
    "--eos-blocks-min": ("eos_blocks_min", int, "the block holding EOS is uniform on [min, max] (default 2)"),
    "--eos-blocks-max": ("eos_blocks_max", int, "... (default 7)"),
}
# every option's default is the model's calibrated value (traces.synthetic.default_config; the module docstring
# says what each is calibrated to and its valid range, which the config checks)


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="python -m traces.synth", description=__doc__.splitlines()[0])
    add_model(ap, required=True)
    ap.add_argument("--mode", choices=DIFFUSION_MODES, default="prefix-recompute",
                    help="generation loop (default prefix-recompute, as TIDE's released code)")
    ap.add_argument("--out", required=True, help="trace file to write (.npz)")
    for opt, (field, typ, text) in _OPTIONS.items():
        ap.add_argument(opt, dest=field, type=typ, default=None, help=text)
    ap.add_argument("--no-eos-stop", action="store_true", help="generate every block (default: stop after the block "
                    "holding EOS, as TIDE's evaluation does)")
    ap.add_argument("--draw", type=int, default=0, help="draw of the generator's uncertain parameters "
                    "(traces.synthetic_draws): 0 the calibrated values (default), i >= 1 seed + i and drawn values")
    ap.add_argument("--with-topk", action="store_true", help="also store per-token top-k expert ids")
    args = ap.parse_args(argv)
    model = ModelSpec.load(args.model)
    overrides = {f: getattr(args, f) for f, _, _ in _OPTIONS.values() if getattr(args, f) is not None}
    if args.no_eos_stop:
        overrides["eos_stop"] = False
    seed = overrides.pop("seed", 0)
    cfg = synthetic_draw(model, args.mode, seed, args.draw, **overrides)
    t0 = time.perf_counter()
    trace = generate(model, cfg, with_topk=args.with_topk)
    elapsed = time.perf_counter() - t0
    out = write_trace(trace, args.out)
    print(f"wrote {out}: {cfg.mode}, {trace.num_steps} steps, {trace.generated_tokens} tokens, "
          f"{trace.num_moe_layers} MoE layers x {trace.num_experts} experts, top-{trace.top_k}, seed {cfg.seed} "
          f"(generated in {elapsed:.2f} s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
