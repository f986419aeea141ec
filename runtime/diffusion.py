"""Block-diffusion generation as LLaDA2.0 does it, in two modes, recording what the model routed.

Semantics are those of the reference ``generate`` (TIDE's released model/modeling_llada2_moe.py; the line numbers
are in ../shared/reference/TIDE.md, "Generation semantics"); where the project offers more it is a setting whose
default is the reference's behaviour.

Layout: the prompt (P tokens) followed by mask tokens, padded to N = ceil((P + gen_length) / bl) blocks of
``block_length`` (bl) tokens; attention is block-causal (a token sees its own block and every earlier block).
Blocks are denoised in order, starting with the block that holds position P.

  steps' = min(steps, gen_length // minimal_topk)           denoising steps per block at most
  n_j    = bl // steps' + [j < bl % steps']                 scheduled commits at step j (0 when steps' > bl)

At step j of a block (stopping early once no mask is left in it):

  forward -> the block's bl logits (float32) -> z = logits / temperature (when temperature > 0 and != 1),
             top_k / top_p filtering, q = softmax(z)
  x0 = a sample of q (do_sample) or argmax q;  p = q(x0), the confidence
       (where x0 is the mask id, the best other token, or a sample of q without it: see "Masks" below)
  commit every masked position with p > threshold; if fewer than n_j, commit the min(n_j, masked) most
  confident masked ones instead.

Stopping: after a block that holds an EOS at a generated position, generation ends (the reference always does;
``stop_at_eos=False`` generates every block, for benchmarks of fixed work). With ``eos_early_stop`` (the
reference's option, off by default) it ends within a step that commits an EOS, if the first EOS of the sequence
so far has no mask between the prompt and it.
Output (what tokens/s counts, as the reference's evaluation does): x[P : P + gen_length] cut after the first
generated EOS, EOS included; ``output_tokens`` in the trace header records its length. An early stop returns
x[P : e + 1] with e the first EOS of the whole sequence, as the reference does (its lines 1659-1663): when the
prompt holds an EOS, e lies in the prompt and the output is empty.

Masks: no output holds the mask id. The reference commits whatever the sampler picks, the mask id included,
which leaves that position masked (to be picked again at a later step of the block, or left masked if the
block's steps run out); here a position whose pick is the mask id takes the most likely other token (argmax)
or a draw from q without the mask id (do_sample) instead. A trained model does not pick the mask id, and
where no pick is the mask id every step is the reference's, the sampler's random draws included.

Modes:
- ``prefix-recompute``: every step forwards the whole prefix up to the end of the current block with the
  block-causal mask (TIDE's released loop). context = tokens forwarded = (block + 1) bl.
- ``block-cache``: the prompt's complete blocks are forwarded once (prefill) and their keys/values cached;
  each step forwards only the current block over the cache; a finished block is forwarded once more (commit)
  to append its keys/values. Exact: finished blocks never see later tokens, so their keys/values never change.
  The last block needs no commit forward.

Every forward is one trace step (schema v1): block (generated block index from 0; -1 prefill), step_in_block,
tokens_forwarded, context_tokens, tokens_committed, kind, and the per-layer expert counts the store saw.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

try:  # the GPU machines may have torch only: the progress bar is optional there
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(iterable, **_kw):  # type: ignore[no-redef]
        return iterable

from runtime.config import RuntimeConfig
from offload.errors import TideError
from offload.policies.base import StepInfo
from offload.trace import DIFFUSION_MODES, KIND_COMMIT, KIND_DENOISE, KIND_PREFILL, SCHEMA_VERSION, Trace, model_header
from offload.trace_check import make_trace

MODES = DIFFUSION_MODES  # the generation modes (offload.trace: one definition for runtime and simulator)


@dataclass(frozen=True)
class GenerationSettings:
    """The reference's generate() arguments (same names and defaults where it has them) and the project's own.

    gen_length, block_length, steps, threshold, temperature, top_k, top_p, minimal_topk, do_sample,
    eos_early_stop   as the reference (module docstring); do_sample False takes the argmax
    mode             prefix-recompute (the reference's loop) or block-cache
    seed             seeds the sampler (do_sample) on the host
    stop_at_eos      stop after the block holding an EOS (the reference, always); False: generate every block
    """

    gen_length: int = 128
    block_length: int = 32
    steps: int = 32
    threshold: float = 0.95
    mode: str = "prefix-recompute"
    temperature: float = 0.0
    do_sample: bool = False
    top_k: int | None = None
    top_p: float | None = None
    minimal_topk: int = 1
    seed: int = 0
    eos_early_stop: bool = False
    stop_at_eos: bool = True

    def check(self) -> None:
        if self.mode not in MODES:
            raise TideError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.gen_length < 1 or self.block_length < 1 or self.steps < 1:
            raise TideError("gen length, block length and steps must be >= 1")
        if self.gen_length > MAX_GEN_LENGTH:
            raise TideError(f"gen length {self.gen_length} is above the limit of {MAX_GEN_LENGTH} tokens")
        if not 1 <= self.minimal_topk <= self.gen_length:
            raise TideError(f"minimal_topk must be in [1, gen_length {self.gen_length}], got {self.minimal_topk}")
        if not 0.0 <= self.threshold <= 1.0:
            raise TideError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.temperature < 0:
            raise TideError("temperature must be >= 0")
        if self.top_k is not None and self.top_k < 0:
            raise TideError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise TideError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def effective_steps(self) -> int:
        """Denoising steps per block at most: the reference's min(steps, gen_length // minimal_topk)."""
        return min(self.steps, self.gen_length // self.minimal_topk)


# positions a generation may hold (prompt excluded): a bound on the work and memory asked for up front
MAX_GEN_LENGTH = 1 << 17


def positions(prompt_length: int, settings: GenerationSettings) -> int:
    """Positions the sequence holds: the prompt and gen_length, padded to whole blocks (the reference's layout)."""
    return -(-(prompt_length + settings.gen_length) // settings.block_length) * settings.block_length


def check_positions(cfg: RuntimeConfig, prompt_length: int, settings: GenerationSettings) -> None:
    """One-line TideError, before any work, when the sequence would hold more positions than the model's
    max_position_embeddings (the KV cache of block-cache and the attention mask of prefix-recompute grow with
    them, the work with their square)."""
    total = positions(prompt_length, settings)
    if total > cfg.max_positions:
        raise TideError(f"prompt {prompt_length} + gen length {settings.gen_length} tokens, padded to whole blocks of "
                        f"{settings.block_length}, take {total} positions; {cfg.spec.name} has "
                        f"{cfg.max_positions} (max_position_embeddings): shorten --gen-length, the prompt or --block-length")


@dataclass(frozen=True, eq=False)
class GenerationResult:
    tokens: list[int]             # the output: generated ids up to and including the first EOS, at most gen_length
    sequence: torch.Tensor        # the whole final sequence (prompt + every generated position)
    step_times_s: np.ndarray      # wall time of each forward (synchronised)
    wall_s: float                 # whole generation, first forward to last
    trace: Trace
    forwards: int
    # "step_wall_s": each step's share of wall_s (see generate); "step_cpu_s", "cpu_s": the same in process CPU
    # time (all threads), which exceeds wall time with several busy threads and falls short of it when other
    # processes take the CPU
    extra: dict[str, Any] = field(default_factory=dict)


def transfer_schedule(block_length: int, steps: int) -> np.ndarray:
    """Scheduled minimum of tokens committed at each of ``steps`` steps: bl // steps, plus one on the first
    bl % steps steps (the reference's; steps beyond bl schedule 0)."""
    base, rem = divmod(block_length, steps)
    return base + (np.arange(steps) < rem).astype(np.int64)


def filter_logits(z: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The reference's top-k then top-p (nucleus) filtering of logits [.., V]: excluded entries become -inf.
    top-k keeps the entries >= the k-th largest (ties kept); top-p keeps the smallest prefix of the sorted
    distribution whose mass reaches p (the entry that crosses p included, the best always kept)."""
    if top_k:
        kth = torch.topk(z, min(top_k, z.shape[-1]), dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        srt, idx = torch.sort(z, dim=-1, descending=True)
        mass = torch.cumsum(torch.softmax(srt, dim=-1), dim=-1)
        drop = torch.zeros_like(mass, dtype=torch.bool)
        drop[..., 1:] = mass[..., :-1] > top_p  # shifted: the entry that crosses p stays
        z = z.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
    return z


def choose(logits: torch.Tensor, masked: torch.Tensor, n_min: int, settings: GenerationSettings,
           gen: torch.Generator | None, mask_id: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 [bl], commit mask [bl]) for one block's logits [bl, V] (the module docstring's step); no masked
    position's x0 is ``mask_id``."""
    z = logits.float()
    t = settings.temperature
    if t > 0 and t != 1.0:
        z = z / t
    probs = torch.softmax(filter_logits(z, settings.top_k, settings.top_p), dim=-1)
    if settings.do_sample:
        x0 = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(probs.device)
    else:
        x0 = probs.argmax(dim=-1)
    hit = (x0 == mask_id) & masked
    if bool(hit.any()):  # the mask id is no answer: the best other token, or a draw without it (module docstring)
        other = probs[hit].clone()
        other[:, mask_id] = 0.0
        if settings.do_sample and bool((other.sum(-1) > 0).all()):
            x0[hit] = torch.multinomial(other.cpu(), 1, generator=gen).squeeze(-1).to(probs.device)
        else:
            x0[hit] = other.argmax(dim=-1)
    p = probs.gather(-1, x0[:, None]).squeeze(-1)
    conf = torch.where(masked, p, torch.full_like(p, -float("inf")))
    high = (conf > settings.threshold) & masked
    if int(high.sum()) >= n_min:
        return x0, high
    k = min(n_min, int(masked.sum()))
    commit = torch.zeros_like(masked)
    commit[torch.topk(conf, k).indices] = True
    return x0, commit


def _closed_eos(x: torch.Tensor, P: int, hi: int, eos_id: int, mask_id: int) -> int | None:
    """The reference's early-stop test: the position of the first EOS of x[:hi] (the prompt included) when no
    mask lies between the prompt and it, else None. A position in the prompt passes (nothing lies between)."""
    eos = (x[:hi] == eos_id).nonzero()
    if not eos.numel():
        return None
    e = int(eos[0, 0])
    return None if bool((x[P:e] == mask_id).any()) else e


def output_length(generated: torch.Tensor, gen_length: int, eos_id: int) -> int:
    """Tokens the reference returns from the generated positions: up to gen_length, cut after the first EOS."""
    head = generated[:gen_length]
    eos = (head == eos_id).nonzero()
    return int(eos[0, 0]) + 1 if eos.numel() else int(head.numel())


class _Recorder:
    """Collects one trace row per forward."""

    def __init__(self) -> None:
        self.counts: list[np.ndarray] = []
        self.meta: list[tuple[int, int, int, int, int, int]] = []
        self.times: list[float] = []

    def add(self, counts: np.ndarray, block: int, sib: int, fwd: int, ctx: int, committed: int, kind: int, dt: float) -> None:
        self.counts.append(np.array(counts, dtype=np.int32, copy=True))
        self.meta.append((block, sib, fwd, ctx, committed, kind))
        self.times.append(dt)

    def set_committed(self, n: int) -> None:
        b, s, f, c, _, k = self.meta[-1]
        self.meta[-1] = (b, s, f, c, n, k)

    def trace(self, header: dict[str, Any]) -> Trace:
        m = np.array(self.meta, dtype=np.int64).reshape(-1, 6)
        return make_trace(header, np.stack(self.counts), block=m[:, 0], step_in_block=m[:, 1], tokens_forwarded=m[:, 2],
                          context_tokens=m[:, 3], tokens_committed=m[:, 4], kind=m[:, 5])


def generate(model: Any, store: Any, cfg: RuntimeConfig, prompt: torch.Tensor, settings: GenerationSettings,
             progress: bool = False, sync: Callable[[], None] | None = None,
             origin: dict[str, Any] | None = None) -> GenerationResult:
    """Run block diffusion with ``model`` (runtime.model) whose routed experts live in ``store``."""
    settings.check()
    check_positions(cfg, int(prompt.numel()), settings)
    device = prompt.device
    # after a forward the host waits for the compute stream only: prefetch copies the store queued on its copy
    # stream run on into the next step, as the simulator lets them (a device-wide synchronize would wait for them)
    sync = sync or (torch.cuda.current_stream(device).synchronize if device.type == "cuda" else (lambda: None))
    bl, P = settings.block_length, int(prompt.numel())
    n_blocks = -(-(P + settings.gen_length) // bl)
    total = n_blocks * bl
    x = torch.full((total,), cfg.mask_token_id, dtype=torch.long, device=device)
    x[:P] = prompt
    positions = torch.arange(total, device=device)
    schedule = transfer_schedule(bl, settings.effective_steps)
    gen = torch.Generator().manual_seed(settings.seed) if settings.do_sample else None
    eos_id = cfg.eos_token_id
    first = P // bl  # first block holding a generated position
    rec = _Recorder()
    cache = None
    from runtime.model import block_causal_mask

    full_mask = block_causal_mask(total, bl, device) if settings.mode == "prefix-recompute" else None

    starts: list[float] = []  # wall-clock start of every forward: step boundaries for step_wall_s
    cpu_starts: list[float] = []  # the process's CPU time at the same moments (a shared CPU shows as cpu < wall)

    def forward(ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None, info: StepInfo, ctx: int,
                write: bool, rows: Any) -> tuple[torch.Tensor, float]:
        starts.append(time.perf_counter())
        cpu_starts.append(time.process_time())
        store.begin_step(info)
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = model(ids, pos, mask, cache=cache, write_cache=write, logits_rows=rows)
        sync()
        dt = time.perf_counter() - t0
        rec.add(store.step_counts, info.block, info.step_in_block, int(ids.numel()), ctx, 0, info.kind, dt)
        return logits, dt

    sync()
    t_start, cpu_start = time.perf_counter(), time.process_time()
    fwd = 0
    if settings.mode == "block-cache":
        cache = model.new_cache(capacity=total)
        if first > 0:
            end = first * bl
            info = StepInfo(index=fwd, block=-1, step_in_block=0, kind=KIND_PREFILL, tokens_forwarded=end)
            forward(x[:end], positions[:end], block_causal_mask(end, bl, device), info, end, True, slice(0, 0))
            fwd += 1
    bar = tqdm(range(first, n_blocks), desc="blocks", unit="block", disable=not progress, leave=False)
    stop = False
    early: int | None = None  # the first EOS's position when the reference's in-step return happened
    for b in bar:
        lo, hi = b * bl, (b + 1) * bl
        gb = b - first
        for step in range(len(schedule)):
            masked = x[lo:hi] == cfg.mask_token_id
            if not bool(masked.any()):
                break
            info = StepInfo(index=fwd, block=gb, step_in_block=step, kind=KIND_DENOISE,
                            tokens_forwarded=hi if settings.mode == "prefix-recompute" else bl)
            if settings.mode == "prefix-recompute":
                logits, _ = forward(x[:hi], positions[:hi], full_mask[:hi, :hi], info, hi, False, slice(lo, hi))
            else:
                logits, _ = forward(x[lo:hi], positions[lo:hi], None, info, hi, False, None)
            fwd += 1
            x0, commit = choose(logits, masked, int(schedule[step]), settings, gen, cfg.mask_token_id)
            block = x[lo:hi]
            block[commit] = x0[commit]
            rec.set_committed(int(commit.sum()))
            if settings.eos_early_stop and bool((x0[commit] == eos_id).any()):
                early = _closed_eos(x, P, hi, eos_id, cfg.mask_token_id)
                if early is not None:
                    stop = True  # the reference returns at once: no commit forward, no later step
                    break
        if stop:
            break
        if settings.stop_at_eos and bool((x[P:hi] == eos_id).any()):
            stop = True
        if settings.mode == "block-cache" and b < n_blocks - 1 and not stop:
            info = StepInfo(index=fwd, block=gb, step_in_block=len(schedule), kind=KIND_COMMIT, tokens_forwarded=bl)
            forward(x[lo:hi], positions[lo:hi], None, info, hi, True, slice(0, 0))
            fwd += 1
        if stop:
            break
    sync()
    t_end, cpu_end = time.perf_counter(), time.process_time()
    wall = t_end - t_start
    # step i spans from its forward's start to the next one's (the sampler and bookkeeping after the forward
    # included); the first from the start of generation, the last to its end: the steps sum to wall_s
    bounds = np.array([t_start, *starts[1:], t_end]) - t_start if starts else np.zeros(1)
    step_wall = np.diff(bounds)
    step_cpu = np.diff(np.array([cpu_start, *cpu_starts[1:], cpu_end]) - cpu_start) if cpu_starts else np.zeros(0)
    if hasattr(bar, "close"):
        bar.close()
    # the reference's in-step return gives x[P : e + 1], e the first EOS of the sequence (empty when it lies in
    # the prompt); otherwise x[P : P + gen_length] cut after the first generated EOS
    n_out = max(0, early + 1 - P) if early is not None else output_length(x[P:], settings.gen_length, eos_id)
    tokens = x[P:P + n_out].tolist()
    if cfg.mask_token_id in tokens:  # every block up to the output's end is finished: a mask here is a bug
        raise TideError(f"generation returned the mask id {cfg.mask_token_id} at output position "
                        f"{tokens.index(cfg.mask_token_id)}: an internal error, please report it")
    header = {"version": SCHEMA_VERSION, "model": model_header(cfg.spec),
              "generation": {"mode": settings.mode, "block_length": bl, "steps": settings.effective_steps,
                             "threshold": settings.threshold, "gen_length": total - P, "prompt_length": P,
                             "temperature": settings.temperature, "do_sample": settings.do_sample,
                             "requested_gen_length": settings.gen_length, "output_tokens": n_out},
              "origin": {"kind": "recorded", "seed": settings.seed, **(origin or {})}}
    return GenerationResult(tokens=tokens, sequence=x.detach().cpu(), step_times_s=np.array(rec.times), wall_s=wall,
                            trace=rec.trace(header), forwards=fwd,
                            extra={"step_wall_s": step_wall, "step_cpu_s": step_cpu, "cpu_s": cpu_end - cpu_start})
