"""``python -m runtime.generate``: generate with LLaDA2-MoE whose routed experts do not all fit the GPU.

With no arguments it runs the small random-weight ``llada2-tiny`` preset on the CPU (the text is meaningless;
the point is the counters and tokens/s). ``--model DIR --prompt "..."`` loads a real Hugging Face LLaDA2.0
directory and prints the generated text. The policy is ``name`` or ``name(k=v, ...)`` (``--policy
"tide(tau=2)"``; tide's default tau is 4) or the recommended-policy file ``sim.explore`` writes (``--policy
runs/.../recommended-policy.json``).

Printed and written (``--metrics-out``): tokens_per_s, the counters under the simulator's names (h2d_bytes,
d2h_bytes, hit_ratio, promotions, demotions, cpu_assignments, gpu_assignments), per-step times, the generated
token ids (``tokens``), the CPU share the run got (``cpu_share``, offload.cpu_share: below 0.8 a warning on
stderr says the machine was busy and the timings are not comparable); ``--trace-out`` writes the routing as a
trace in the shared schema.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from runtime.config import RuntimeConfig
from runtime.diffusion import GenerationSettings, check_positions
from runtime.environment import environment
from runtime.session import (Session, add_session_arguments, check_prompt_length, cost_model, is_checkpoint,
                             random_prompt)
from offload.cli import add_budget, add_hardware, budget_from, given_options, Parser, refuse
from offload.cpu_share import busy_warning
from offload.errors import TideError, run_cli
from offload.policies import RUNNABLE, Policy, make_policy, policy_from_text
from offload.policies.policy_file import PolicyChoice, read_policy_file
from offload.results import to_json
from offload.atomic_io import atomic_write_text
from offload.trace_io import write_trace


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m runtime.generate", description=__doc__.split("\n\n")[0])
    add_session_arguments(p, gen_length=None, modes="one")
    p.add_argument("--prompt", default=None, help="prompt text (needs the checkpoint's tokenizer)")
    p.add_argument("--policy", default="tide", help=f"name or name(k=v, ...), e.g. tide(tau=2) ({', '.join(RUNNABLE)}), "
                   "or the recommended-policy JSON of sim.explore")
    add_budget(p, default="half the experts, or the policy file's")
    add_hardware(p, what=": prices cost-aware policies such as tide-opt and riptide as the simulator does; without "
                 "it they fall back to their documented byte-ratio estimates")
    g = p.add_argument_group("decoding (the reference generate()'s arguments and defaults)")
    g.add_argument("--threshold", type=float, default=0.95, help="commit every masked position whose confidence "
                   "exceeds this, at least the step's scheduled count (default 0.95)")
    g.add_argument("--temperature", type=float, default=0.0, help="logits are divided by it when > 0; it changes "
                   "the confidences, and the tokens only with --do-sample (default 0)")
    g.add_argument("--do-sample", action="store_true", help="sample each position (seeded by --seed) instead of "
                   "taking the argmax; TIDE's evaluation samples")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default: all)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus filtering at this mass (default: off)")
    g.add_argument("--minimal-topk", type=int, default=1, help="steps per block at most gen_length // this "
                   "(default 1)")
    g.add_argument("--eos-early-stop", action="store_true", help="end within the step that commits an EOS once "
                   "every position before it is committed (default: at the end of the block holding it)")
    p.add_argument("--metrics-out", default=None, help="write metrics JSON here")
    p.add_argument("--trace-out", default=None, help="write the routing trace here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    a.given = given_options(p, argv)
    return a


def _policy(a: argparse.Namespace) -> tuple[Policy, PolicyChoice | None]:
    """The policy, and the recommended-policy file it came from (None for a ``name(k=v, ...)`` spec). A file's
    model and hardware profile fill --model and --hardware when they are not given."""
    if not (a.policy.endswith(".json") or Path(a.policy).exists()):
        return policy_from_text(a.policy), None
    choice = read_policy_file(a.policy)
    if "model" not in a.given and choice.model_source:
        a.model = choice.model_source
    if a.hardware is None and choice.hardware_source and make_policy(choice.policy, **choice.params).uses_cost:
        a.hardware = choice.hardware_source
    return make_policy(choice.policy, **choice.params), choice


def _prompt_ids(a: argparse.Namespace, cfg: RuntimeConfig, tok: Any, device: torch.device) -> torch.Tensor:
    if a.prompt is None:
        return random_prompt(cfg, a.prompt_length, a.seed, device)
    if tok is None:
        raise TideError("--prompt needs a checkpoint directory with a tokenizer")
    msgs = [{"role": "user", "content": a.prompt}]
    try:
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    except Exception:  # tokenizer without a chat template
        ids = tok(a.prompt)["input_ids"]
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return torch.tensor(list(ids), dtype=torch.long, device=device)


def _settings(a: argparse.Namespace, file_mode: str | None) -> GenerationSettings:
    """The generation settings, checked; with a random prompt (its length known now) the prompt and generated
    blocks must fit the model's max_position_embeddings (a text prompt is checked once tokenized)."""
    gen_length = a.gen_length if a.gen_length is not None else (1024 if is_checkpoint(a.model) else 128)
    settings = GenerationSettings(gen_length=gen_length, block_length=a.block_length, steps=a.steps,
                                  threshold=a.threshold, mode=a.mode or file_mode or "prefix-recompute",
                                  temperature=a.temperature, do_sample=a.do_sample, top_k=a.top_k, top_p=a.top_p,
                                  minimal_topk=a.minimal_topk, eos_early_stop=a.eos_early_stop, seed=a.seed)
    settings.check()
    if a.prompt is None:
        check_prompt_length(a.prompt_length)
        check_positions(RuntimeConfig.load(a.model, num_layers=a.num_layers), a.prompt_length, settings)
    return settings


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Build everything from parsed arguments, generate, and return the run's RunRecord as JSON (+ ``text``)."""
    policy, choice = _policy(a)
    file_budget, file_mode = (choice.experts_per_layer, choice.mode) if choice else (None, None)
    settings = _settings(a, file_mode)  # checked, positions included, before any weight is built
    session = Session.from_args(a)
    spec, device, dtype = session.cfg.spec, session.device, session.dtype
    if choice is not None:
        choice.check_model(spec)
    if not policy.needs_budget:
        refuse(a.given, ("gpu_experts_per_layer", "gpu_memory_gb"), f"policy {policy.name} keeps every expert")
    if not policy.uses_cost:
        refuse(a.given, ("hardware",), f"policy {policy.name} decides without a cost model")
    elif a.hardware is None:
        print(f"note: {policy.name} decides without a hardware profile (--hardware): it falls back to its "
              f"byte-ratio estimates, and its decisions differ from the simulator's")
    if a.prompt is not None:
        refuse(a.given, ("prompt_length",), "--prompt gives the prompt")
    budget = None if not policy.needs_budget else budget_from(a, spec, default=max(1, spec.num_experts // 2),
                                                              experts_per_layer=file_budget)
    # cost-aware policies price this machine with the same cost model the simulator would
    cost = None if a.hardware is None else cost_model(session.cfg, a.hardware, dtype)
    prompt = _prompt_ids(a, session.cfg, session.tokenizer, device)
    result, record = session.run(policy, budget, prompt, settings, cost=cost, progress=not a.quiet)
    metrics = to_json(dataclasses.replace(record, environment=environment(device, dtype), priced_with=a.hardware or ""))
    written = []
    if a.trace_out:
        written.append(f"trace {write_trace(result.trace, a.trace_out)}")
    if a.metrics_out:
        atomic_write_text(a.metrics_out, json.dumps(metrics, indent=1) + "\n")
        written.append(f"metrics {a.metrics_out}")
    metrics["written"] = written
    if session.tokenizer is not None:
        metrics["text"] = session.tokenizer.decode(result.tokens, skip_special_tokens=True)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    m = run(parse_args(argv))
    if m["random_weights"]:
        print(f"{m['model']} with random weights: the generated text is meaningless; ids shown")
    print(m.get("text", f"tokens: {m['tokens'][:64]}{' ...' if len(m['tokens']) > 64 else ''}"))
    print(f"\n{m['label']} budget={m['budget']} mode={m['mode']}: {m['tokens_per_s']:.2f} tokens/s "
          f"({m['generated_tokens']} tokens, {m['forwards']} forwards, {m['wall_s']:.2f} s"
          + ("" if m["cpu_share"] is None else f", CPU share {m['cpu_share']:.2f}") + ")")
    print(f"hit_ratio={m['hit_ratio']:.3f} promotions={m['promotions']} demotions={m['demotions']} "
          f"h2d_bytes={m['h2d_bytes']} d2h_bytes={m['d2h_bytes']} cpu_assignments={m['cpu_assignments']} "
          f"gpu_assignments={m['gpu_assignments']}")
    for what in m["written"]:
        print(f"wrote {what}")
    warning = busy_warning(m["cpu_share"], m["label"])
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
