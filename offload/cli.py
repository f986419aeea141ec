"""Command-line pieces every CLI shares, so that a concept has one spelling everywhere:

  --model M                   a model preset, config.json or model directory
  --hardware H                a hardware preset or profile JSON (prices cost-aware policies, checks the budget)
  --executor X                an executor preset or profile JSON (how the simulator prices the plan)
  --gpu-experts-per-layer B | --gpu-memory-gb G      the GPU expert budget (``offload.budget``)
  --policy SPEC / --policies SPEC...                 ``name`` or ``name(k=v, ...)`` (``offload.policies.spec``)
  --mode / --modes, --gen-length, --block-length, --prompt-length, --steps, --seed   generation
  --out PATH                  where a command writes: its output directory, or the one file it writes

and one default prompt length, DEFAULT_PROMPT_LENGTH, for every command and generator that has one (the
runtime's random prompts, the simulator's synthetic traces, the benchmarks),

the rule that a CLI refuses an option it would ignore: :func:`given_options` tells which options the
command line set, :func:`refuse` ends with one line naming those a run would not use. :class:`Parser` makes
argparse's own errors (unknown option, bad value) one line too, like every other bad input.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, NoReturn, Sequence

import numpy as np

from offload.errors import TideError
from offload.executor import DEFAULT_EXECUTOR, EXECUTOR_PRESETS
from offload.hardware import HARDWARE_PRESETS
from offload.model_spec import MODEL_PRESETS, ModelSpec
from offload.trace import DIFFUSION_MODES, MODES

# Prompt tokens when a command makes up the prompt: 128, the prompt of the synthetic traces the simulator's
# predictions are made on (traces.synthetic), so that runtime.generate and runtime.bench run, with their defaults,
# the workload sim.explore predicts with its defaults; and whole blocks of the default block length 32
# (block-cache prefills four complete blocks, the first generated block holds no prompt token).
DEFAULT_PROMPT_LENGTH = 128


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: MESSAGE (see --help)`` and exit status 2, no usage block; the
    description and help are plain text (docstring markup such as double backquotes is dropped)."""

    def format_help(self) -> str:
        return super().format_help().replace("``", "")

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def add_model(p: argparse.ArgumentParser, default: str | None = None, required: bool = False, what: str = "") -> None:
    p.add_argument("--model", default=default, required=required,
                   help=f"model preset ({', '.join(MODEL_PRESETS)}), config.json or model directory{what}")


def add_hardware(p: argparse.ArgumentParser, default: str | None = None, what: str = "") -> None:
    p.add_argument("--hardware", default=default,
                   help=f"hardware preset ({', '.join(HARDWARE_PRESETS)}) or profile JSON (python -m "
                        f"validate.calibrate writes one){what}")


def add_executor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default=None, metavar="NAME|FILE",
                   help=f"how the plan is carried out and priced: executor preset ({', '.join(EXECUTOR_PRESETS)}; "
                        f"default {DEFAULT_EXECUTOR}, this project's runtime) or executor JSON (offload.executor)")


def add_budget(p: argparse.ArgumentParser, default: str) -> None:
    """The budget, one of two ways; ``default`` says what applies when neither is given."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpu-experts-per-layer", type=int, default=None,
                   help=f"budget: routed experts resident per MoE layer (default {default})")
    g.add_argument("--gpu-memory-gb", type=float, default=None, help="budget: GiB of GPU memory for routed experts")


def budget_from(a: argparse.Namespace, model: ModelSpec, default: int | None, hw: Any = None,
                experts_per_layer: int | None = None) -> np.ndarray:
    """Experts per MoE layer from the budget options (``experts_per_layer``: a policy file's, used when the
    command line gives none), else ``default`` (None: every expert)."""
    from offload.budget import resolve_budget

    per_layer = a.gpu_experts_per_layer if a.gpu_experts_per_layer is not None else experts_per_layer
    if per_layer is None and a.gpu_memory_gb is None:
        per_layer = default
    return resolve_budget(model, hw, experts_per_layer=per_layer, gpu_memory_gb=a.gpu_memory_gb)


def add_generation(p: argparse.ArgumentParser, *, gen_length: int | None, steps: bool = True,
                   modes: str = "one", seed_help: str = "seed", gen_length_default: str | None = None) -> None:
    """Generation options; ``modes``: "one" (--mode), "many" (--modes ...) or "none"."""
    if modes == "one":
        p.add_argument("--mode", default=None, choices=DIFFUSION_MODES, help="generation mode (default prefix-recompute)")
    elif modes == "many":  # the simulator's: autoregressive decode too (synthetic traces.synthetic_ar)
        p.add_argument("--modes", nargs="+", default=list(DIFFUSION_MODES), choices=MODES,
                       help=f"generation modes (default: {' '.join(DIFFUSION_MODES)}; autoregressive: token-by-token "
                            f"decode of any MoE model, synthetic traces calibrated to published AR locality)")
    p.add_argument("--gen-length", type=int, default=gen_length, help="tokens to generate"
                   + (f" (default {gen_length_default or gen_length})" if (gen_length_default or gen_length) else ""))
    p.add_argument("--block-length", type=int, default=32, help="tokens per block (default 32)")
    p.add_argument("--prompt-length", type=int, default=DEFAULT_PROMPT_LENGTH,
                   help=f"prompt tokens (default {DEFAULT_PROMPT_LENGTH})")
    if steps:
        p.add_argument("--steps", type=int, default=32, help="denoising steps per block (default 32)")
    p.add_argument("--seed", type=int, default=0, help=f"{seed_help} (default 0)")


def given_options(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations the command line set (a second parse with every default removed); call after the
    real parse succeeded. The parser's defaults are gone afterwards."""
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def refuse(given: Iterable[str], ignored: Iterable[str], why: str) -> None:
    """One-line TideError when an option in ``ignored`` was given: ``why`` says what makes it unused."""
    bad = [o for o in ignored if o in set(given)]
    if bad:
        raise TideError(f"{why}: {', '.join('--' + o.replace('_', '-') for o in bad)} would be ignored")
