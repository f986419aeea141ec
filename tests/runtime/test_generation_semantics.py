"""Generation semantics against the reference generate() (TIDE's released modeling_llada2_moe.py; facts in
../shared/reference/TIDE.md, "Generation semantics"): steps capped by gen_length // minimal_topk, the output cut
after the first EOS (EOS included) within gen_length and counted as the reference counts it, argmax unless
do_sample, top-k / top-p filtering, the reference configuration's defaults, and the early stops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from offload.errors import TideError
from offload.model_spec import ModelSpec
from runtime.config import RuntimeConfig
from runtime.diffusion import GenerationSettings, filter_logits, generate, output_length, transfer_schedule
from test_generate import CFG, PROMPT, build

EOS = CFG.eos_token_id


class ForceToken:
    """The model, with the logits of absolute position ``at`` pushed towards ``token`` (confidence ~1)."""

    def __init__(self, model, at: int, token: int = EOS) -> None:
        self.model, self.at, self.token = model, at, token

    def __call__(self, ids, pos, mask=None, *, cache=None, write_cache=False, logits_rows=None):
        out = self.model(ids, pos, mask, cache=cache, write_cache=write_cache, logits_rows=logits_rows)
        rows = pos[logits_rows] if isinstance(logits_rows, slice) else pos
        hit = (rows == self.at).nonzero()
        if hit.numel():
            out = out.clone()
            out[int(hit[0, 0]), self.token] += 1e4
        return out

    def new_cache(self, **kw):
        return self.model.new_cache(**kw)


ForceEos = ForceToken  # pushes towards EOS unless told another token


def gen(settings: GenerationSettings, eos_at: int | None = None, name: str = "all-gpu"):
    model, store = build(name, {} if name == "all-gpu" else {"tau": 2}, block_length=settings.block_length,
                         mode=settings.mode)
    return generate(model if eos_at is None else ForceEos(model, eos_at), store, CFG, PROMPT, settings)


def test_steps_capped_by_gen_length_over_minimal_topk():
    """Item 1: gen_length 16 < steps 32 -> 16 steps of 2 tokens in a 32-token block (the reference)."""
    s = GenerationSettings(gen_length=16, block_length=32, steps=32)
    assert s.effective_steps == 16 and transfer_schedule(32, 16).tolist() == [2] * 16
    assert GenerationSettings(gen_length=64, steps=32, minimal_topk=4).effective_steps == 16
    # steps beyond the block schedule 0 after the first block_length steps, as the reference's schedule does
    assert transfer_schedule(4, 6).tolist() == [1, 1, 1, 1, 0, 0]
    res = gen(GenerationSettings(gen_length=16, block_length=32, steps=32, threshold=1.0, stop_at_eos=False))
    assert res.trace.header["generation"]["steps"] == 16
    # threshold 1 commits exactly the schedule, 2 per step: the one block's 20 masked positions (P = 12) take 10
    # forwards (the old min(steps, block_length) schedule committed 1 per step: 20 forwards)
    assert np.all(res.trace.tokens_committed == 2) and res.forwards == 10


def test_output_is_cut_after_the_first_eos_and_counted_so():
    """Item 2: the output is x[P:P+gen_length] cut after the first EOS, EOS included; tokens/s counts it."""
    P = PROMPT.numel()
    res = gen(GenerationSettings(gen_length=24, block_length=8, steps=4), eos_at=P + 5)
    assert len(res.tokens) == 6 and res.tokens[-1] == EOS and EOS not in res.tokens[:-1]
    assert res.trace.generated_tokens == 6 == res.trace.header["generation"]["output_tokens"]
    # work went on to the end of the block holding the EOS: more committed than output
    assert int(res.trace.tokens_committed.sum()) > 6
    # no EOS: gen_length tokens, never the padding past it (P = 12, bl = 8: 20 tokens fill three blocks)
    res = gen(GenerationSettings(gen_length=20, block_length=8, steps=4, stop_at_eos=False))
    assert len(res.tokens) == 20 and res.trace.generated_tokens == 20
    assert int(res.trace.tokens_committed.sum()) == 20  # positions 12..31: the padded end is not generated ...
    res = gen(GenerationSettings(gen_length=17, block_length=8, steps=4, stop_at_eos=False))
    assert len(res.tokens) == 17 and int(res.trace.tokens_committed.sum()) == 20  # ... unless a block is partial


def test_output_length_rule():
    t = torch.tensor([5, 6, EOS, 7, EOS])
    assert output_length(t, 5, EOS) == 3 and output_length(t, 2, EOS) == 2 and output_length(t[:2], 5, EOS) == 2


def test_stop_after_the_eos_block_and_eos_early_stop():
    P = PROMPT.numel()
    full = gen(GenerationSettings(gen_length=40, block_length=8, steps=8, stop_at_eos=False), eos_at=P + 3)
    late = gen(GenerationSettings(gen_length=40, block_length=8, steps=8), eos_at=P + 3)
    early = gen(GenerationSettings(gen_length=40, block_length=8, steps=8, eos_early_stop=True), eos_at=P + 3)
    assert full.tokens == late.tokens == early.tokens  # the same output either way ...
    assert early.forwards <= late.forwards < full.forwards  # ... for less work
    # P = 12, bl = 8: the first generated block spans positions 8..15 and holds the EOS at 15; nothing follows it
    assert set(late.trace.block.tolist()) == {0} and set(full.trace.block.tolist()) == set(range(6))


def test_temperature_without_do_sample_takes_the_argmax():
    """Item 3: the reference samples only with do_sample; a temperature alone changes confidences, not the seed's
    role."""
    a = gen(GenerationSettings(gen_length=16, block_length=8, steps=4, temperature=0.7, seed=3))
    b = gen(GenerationSettings(gen_length=16, block_length=8, steps=4, temperature=0.7, seed=4))
    assert a.tokens == b.tokens
    c = gen(GenerationSettings(gen_length=16, block_length=8, steps=4, temperature=0.7, do_sample=True, seed=3))
    d = gen(GenerationSettings(gen_length=16, block_length=8, steps=4, temperature=0.7, do_sample=True, seed=4))
    assert c.tokens != d.tokens


def test_top_k_and_top_p_filtering():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(z, 2, None)).tolist() == [[False, False, True, True]]
    # top-p 0.7: 0.5 alone is below, 0.5 + 0.3 crosses it and stays
    assert torch.isinf(filter_logits(z, None, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(z, None, 0.45)).tolist() == [[False, True, True, True]]
    assert torch.equal(filter_logits(z, 0, 1.0), z)


def test_reference_config_defaults_when_keys_are_missing():
    """Item 4: the reference configuration's defaults, not the published checkpoints' values."""
    raw = {k: v for k, v in CFG.spec.raw_config.items()
           if k not in ("rope_theta", "rms_norm_eps", "routed_scaling_factor", "partial_rotary_factor", "rotary_dim")}
    cfg = RuntimeConfig.from_spec(ModelSpec.from_config(raw, name="t"))
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.routed_scaling_factor) == (10000.0, 1e-5, 2.5)
    assert cfg.rotary_dim == CFG.spec.head_dim // 2


@pytest.mark.parametrize("bad,match", [
    (dict(minimal_topk=0), "minimal_topk must be in"), (dict(top_p=0.0), "top_p must be in"),
    (dict(top_k=-1), "top_k must be >= 0"), (dict(gen_length=10**7), "above the limit"),
])
def test_bad_settings_are_one_line_errors(bad, match):
    with pytest.raises(TideError, match=match) as exc:
        GenerationSettings(**bad).check()
    assert "\n" not in str(exc.value)


def test_num_layers_beyond_the_model_is_refused():
    with pytest.raises(TideError, match=r"--num-layers must be in \[2, 4\]"):
        RuntimeConfig.load("llada2-tiny", num_layers=100)


def test_cli_counts_at_most_gen_length(tmp_path):
    """issue 12: `runtime.generate --gen-length 64 --prompt-length 20` reports at most 64 tokens and counts those."""
    import json

    from runtime.generate import main

    assert main(["--gen-length", "64", "--prompt-length", "20", "--metrics-out", str(tmp_path / "m.json"),
                 "--quiet"]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["generated_tokens"] == len(m["tokens"]) <= 64
    assert m["tokens_per_s"] == pytest.approx(m["generated_tokens"] / m["wall_s"])


def test_tokenizer_failure_states_its_cause(tmp_path, capsys):
    """issue 12 item 6: the note names the cause and the --trust-remote-code switch, not only a class name."""
    pytest.importorskip("transformers")
    from runtime.session import _tokenizer

    assert _tokenizer(tmp_path, trust_remote_code=False) is None
    out = capsys.readouterr().out
    assert f"no tokenizer loaded from {tmp_path}: " in out and "--trust-remote-code" in out and "\n" == out[-1]


def test_device_defaults_to_cuda_when_present():
    """issue 12 item 7: --device auto (the default) picks CUDA and bf16 when torch sees a GPU, else the CPU."""
    from runtime.generate import parse_args
    from runtime.session import Session

    a = parse_args(["--num-layers", "2"])
    assert a.device == "auto"
    s = Session.from_args(a)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert s.device.type == want and s.dtype == (torch.bfloat16 if want == "cuda" else torch.float32)


def test_help_is_plain_text_and_lists_runnable_policies(capsys):
    """issue 12 item 16: no docstring markup in help; --policy does not offer the clairvoyant oracle; the
    defaults are stated."""
    from runtime.generate import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "oracle" not in text and "riptide" in text and "default 1024 with a checkpoint" in text
