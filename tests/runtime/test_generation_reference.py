"""Generation against a line-by-line transcription of the reference generate() (TIDE's released
model/modeling_llada2_moe.py, generate: the loop over blocks and steps, the eos_early_stop return at its lines
1659-1663, the final cut at 1673-1684), for prompts that hold an EOS: the reference's early stop finds the
prompt's EOS first and returns an empty output (issue 17 item 5). And no output ever holds the mask id."""

from __future__ import annotations

import pytest
import torch

from offload.policies.base import StepInfo
from offload.trace import KIND_DENOISE
from runtime.diffusion import GenerationSettings, generate
from runtime.model import block_causal_mask
from test_generate import CFG, PROMPT, build
from test_generation_semantics import ForceEos, ForceToken

EOS, MASK = CFG.eos_token_id, CFG.mask_token_id


def reference_generate(
    model,
    store,
    prompt: torch.Tensor,
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    threshold: float,
    eos_early_stop: bool,
    minimal_topk: int = 1,
) -> list[int]:
    """The reference's generate() with temperature 0, no top-k / top-p, do_sample off (argmax), batch 1,
    transcribed over this project's model (whose forward takes a block-causal bool mask and the logits rows)."""
    steps = min(steps, gen_length // minimal_topk)
    P = prompt.numel()
    num_blocks = (P + gen_length + block_length - 1) // block_length
    total_length = num_blocks * block_length
    mask = block_causal_mask(total_length, block_length)
    position_ids = torch.arange(total_length)
    x = torch.full((total_length,), MASK, dtype=torch.long)
    x[:P] = prompt
    base, remainder = divmod(block_length, steps)
    schedule = torch.full((steps,), base, dtype=torch.int64)
    schedule[:remainder] += 1
    fwd = 0
    for num_block in range(P // block_length, num_blocks):
        end = (num_block + 1) * block_length
        cur_x = x[:end]  # a view, as in the reference
        for step in range(steps):
            active = cur_x[-block_length:] == MASK
            active_tokens = int(active.sum())
            if not active_tokens:
                break
            store.begin_step(
                StepInfo(index=fwd, block=num_block, step_in_block=step, kind=KIND_DENOISE, tokens_forwarded=end)
            )
            fwd += 1
            with torch.inference_mode():
                logits = model(cur_x, position_ids[:end], mask[:end, :end], logits_rows=slice(end - block_length, end))
            probs = torch.softmax(logits.float(), dim=-1)
            x0 = probs.argmax(-1)
            x0_p = probs.gather(-1, x0[:, None]).squeeze(-1)
            num_to_transfer = int(schedule[step])
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            confidence = torch.where(active, x0_p, -torch.inf)
            high = confidence > threshold
            if int(high.sum()) >= num_to_transfer:
                transfer = high
            else:
                transfer[torch.topk(confidence, k=min(num_to_transfer, active_tokens)).indices] = True
            if transfer.any():
                cur_x[-block_length:][transfer] = x0[transfer]
            if eos_early_stop and (x0[transfer] == EOS).any():
                eos_pos = (cur_x == EOS).nonzero()
                if len(eos_pos) > 0:
                    eos_pos = int(eos_pos[0, 0])
                    if (cur_x[P:eos_pos] != MASK).all():
                        return x[: eos_pos + 1][P:].tolist()
        if (x[P:end] == EOS).any():
            break
    answer = x[: P + gen_length]
    eos = (answer[P:] == EOS).nonzero()
    first = int(eos[0, 0]) if len(eos) else gen_length
    return answer[P : P + first + 1].tolist()


def with_eos(at: int) -> torch.Tensor:
    p = PROMPT.clone()
    p[at] = EOS
    return p


# P = 12, block_length 8: positions 8..11 of the prompt share block 1 with the first generated positions 12..15
PROMPTS = {"eos-first": with_eos(0), "eos-in-shared-block": with_eos(9), "eos-last": with_eos(11)}


@pytest.mark.parametrize("prompt_name", sorted(PROMPTS))
@pytest.mark.parametrize("eos_at", [None, 14, 29])  # none generated; in the shared block; in a later block
@pytest.mark.parametrize("early", [False, True])
def test_prompt_holding_eos_gives_the_reference_output(prompt_name, eos_at, early):
    prompt = PROMPTS[prompt_name]
    kw = dict(gen_length=40, block_length=8, steps=8, threshold=0.95, eos_early_stop=early)
    model, store = build("all-gpu", {}, block_length=8)
    want = reference_generate(model if eos_at is None else ForceEos(model, eos_at), store, prompt, **kw)
    if early and eos_at is not None:
        assert want == []  # the reference's early stop finds the prompt's EOS first: an empty output
    for mode in ("prefix-recompute", "block-cache"):
        model, store = build("all-gpu", {}, block_length=8, mode=mode)
        res = generate(
            model if eos_at is None else ForceEos(model, eos_at),
            store,
            CFG,
            prompt,
            GenerationSettings(mode=mode, **kw),
        )
        assert res.tokens == want, mode
        assert MASK not in res.tokens
        assert res.trace.header["generation"]["output_tokens"] == len(want) == res.trace.generated_tokens


@pytest.mark.parametrize("early", [False, True])
def test_prompt_without_eos_matches_the_reference_too(early):
    kw = dict(gen_length=40, block_length=8, steps=8, threshold=0.95, eos_early_stop=early)
    model, store = build("all-gpu", {}, block_length=8)
    want = reference_generate(ForceEos(model, 21), store, PROMPT, **kw)
    assert want[-1] == EOS and len(want) == 21 - PROMPT.numel() + 1
    for mode in ("prefix-recompute", "block-cache"):
        model, store = build("all-gpu", {}, block_length=8, mode=mode)
        assert generate(ForceEos(model, 21), store, CFG, PROMPT, GenerationSettings(mode=mode, **kw)).tokens == want


@pytest.mark.parametrize("mode", ["prefix-recompute", "block-cache"])
@pytest.mark.parametrize("sample", [False, True])
def test_a_model_that_picks_the_mask_id_never_outputs_it(mode, sample):
    """The reference would commit the mask id, leaving the position masked to the end (its output would hold
    it); here the position takes the best other token (or a draw without the mask id)."""
    P = PROMPT.numel()
    kw = dict(
        gen_length=24,
        block_length=8,
        steps=4,
        mode=mode,
        stop_at_eos=False,
        do_sample=sample,
        temperature=1.0 if sample else 0.0,
        seed=5,
    )
    model, store = build("all-gpu", {}, block_length=8, mode=mode)
    plain = generate(model, store, CFG, PROMPT, GenerationSettings(**kw))
    model, store = build("all-gpu", {}, block_length=8, mode=mode)
    forced = generate(ForceToken(model, P + 2, MASK), store, CFG, PROMPT, GenerationSettings(**kw))
    assert MASK not in forced.tokens and len(forced.tokens) == len(plain.tokens) == 24
    if not sample:  # what the reference returns there: the mask id, left at that position
        model, store = build("all-gpu", {}, block_length=8)
        want = reference_generate(
            ForceToken(model, P + 2, MASK),
            store,
            PROMPT,
            gen_length=24,
            block_length=8,
            steps=4,
            threshold=0.95,
            eos_early_stop=False,
        )
        assert want[2] == MASK and MASK not in want[:2] + want[3:]
