"""Bad inputs to the runtime end in one line and exit status 2 within seconds, the work bounded before it is
allocated (issue 17 item 6): positions against max_position_embeddings, weights against memory; and the CLIs'
shared spellings (--out for an output directory, one default prompt length)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from offload.cli import DEFAULT_PROMPT_LENGTH
from offload.errors import TideError
from runtime.config import MAX_POSITIONS, RuntimeConfig
from runtime.diffusion import GenerationSettings, check_positions, generate, positions
from runtime.random_weights import random_weights

ROOT = Path(__file__).resolve().parents[2]
CFG = RuntimeConfig.load("llada2-tiny")


def cli(module: str, *args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    return p, time.perf_counter() - t0


def assert_one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    err = p.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err


@pytest.mark.parametrize(
    "module,mode",
    [("runtime.generate", "block-cache"), ("runtime.generate", "prefix-recompute"), ("runtime.bench", None)],
)
def test_more_positions_than_the_model_has_is_refused_at_once(module, mode):
    """`--gen-length 65536 --mode block-cache` on llada2-tiny (4096 positions) ran without bound."""
    args = ["--gen-length", "65536"] + (["--mode", mode] if mode else [])
    p, took = cli(module, *args)
    assert_one_line_error(p, "4096 (max_position_embeddings)")
    assert took < 60  # a torch import and a config read; no weight is built


def test_positions_are_the_padded_blocks():
    s = GenerationSettings(gen_length=4064, block_length=32)
    assert positions(32, s) == 4096 and positions(33, s) == 4128
    check_positions(CFG, 32, s)
    with pytest.raises(TideError, match="take 4128 positions; llada2-tiny has 4096"):
        check_positions(CFG, 33, s)
    assert CFG.max_positions == 4096
    raw = {k: v for k, v in CFG.spec.raw_config.items() if k != "max_position_embeddings"}
    from offload.model_spec import ModelSpec

    assert RuntimeConfig.from_spec(ModelSpec.from_config(raw, name="t")).max_positions == MAX_POSITIONS == 16384


def test_generate_checks_a_long_prompt_before_any_forward():
    """A text prompt's length is known only once tokenized: generate() checks it before the first forward."""

    class Untouchable:
        def __call__(self, *a, **kw):
            raise AssertionError("forwarded")

        def new_cache(self, **kw):
            raise AssertionError("allocated a cache")

    prompt = torch.zeros(4090, dtype=torch.long)
    with pytest.raises(TideError, match="max_position_embeddings"):
        generate(Untouchable(), None, CFG, prompt, GenerationSettings(gen_length=32, mode="block-cache"))


def huge_config(tmp_path: Path, experts: int = 10**9) -> Path:
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({**CFG.spec.raw_config, "num_experts": experts}))
    return path


def test_a_billion_experts_is_refused_before_allocating(tmp_path):
    """runtime.generate on a config of 10^9 experts tried to allocate 512 GB (explore refused it cleanly)."""
    p, took = cli("runtime.generate", "--model", str(huge_config(tmp_path)), "--quiet")
    assert_one_line_error(p, "GiB of host memory for its weights")
    assert "1000000000 experts" in p.stderr and took < 60
    p, _ = cli("runtime.bench", "--model", str(huge_config(tmp_path)))
    assert_one_line_error(p, "GiB of host memory for its weights")


def test_memory_check_counts_experts_and_other_weights():
    experts, other = CFG.weight_bytes(4)
    s = CFG.spec
    assert experts == s.num_moe_layers * s.num_experts * 3 * s.hidden_size * s.moe_intermediate_size * 4
    assert other == s.non_expert_params * 4
    CFG.check_memory(4, "float32", on_gpu=False, host_free_bytes=experts + other)
    with pytest.raises(TideError, match="needs .* GiB of host memory") as exc:
        CFG.check_memory(4, "float32", on_gpu=False, host_free_bytes=experts + other - 1)
    assert "\n" not in str(exc.value)
    CFG.check_memory(4, "float32", on_gpu=True, host_free_bytes=experts)  # on a GPU the rest is the GPU's
    with pytest.raises(TideError, match="free on the GPU"):
        CFG.check_memory(4, "float32", on_gpu=True, gpu_free_bytes=other - 1, host_free_bytes=None)
    CFG.check_memory(4, "float32", on_gpu=False, host_free_bytes=None)  # unknown: not checked


def test_random_weights_refuse_before_allocating(tmp_path):
    cfg = RuntimeConfig.load(str(huge_config(tmp_path)))
    t0 = time.perf_counter()
    with pytest.raises(TideError, match="host memory"):
        random_weights(cfg, seed=0)
    assert time.perf_counter() - t0 < 5


def test_bench_writes_to_out_and_knows_no_out_dir(tmp_path):
    p, _ = cli("runtime.bench", "--out-dir", str(tmp_path))
    assert_one_line_error(p, "unrecognized arguments: --out-dir")


def test_one_default_prompt_length_across_the_clis():
    from runtime.bench import parse_args as bench_args
    from runtime.generate import parse_args as generate_args

    assert DEFAULT_PROMPT_LENGTH == 128
    assert generate_args([]).prompt_length == bench_args([]).prompt_length == DEFAULT_PROMPT_LENGTH
    for module in ("runtime.generate", "runtime.bench"):
        assert f"prompt tokens (default {DEFAULT_PROMPT_LENGTH})" in " ".join(cli(module, "--help")[0].stdout.split())


def test_no_cli_spells_the_output_directory_out_dir():
    """One spelling per concept: --out names where a command writes, in every CLI and script of the project."""
    sources = [
        f
        for d in ("offload", "traces", "runtime", "sim", "validate", "benchmarks")
        for f in (ROOT / d).rglob("*")
        if f.suffix in (".py", ".sh")
    ]
    assert sources and not [str(f) for f in sources if "--out-dir" in f.read_text()]
