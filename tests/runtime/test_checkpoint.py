"""Checkpoint round trip in the Hugging Face layout, and one-line errors for each bad input."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from runtime.checkpoint import INDEX_FILE, ExpertWeights, load_checkpoint, split_state, write_checkpoint
from runtime.config import RuntimeConfig
from runtime.model import LLaDA2MoE, block_causal_mask
from runtime.random_weights import random_state, random_weights
from reference_experts import LocalExperts
from offload.errors import TideError

SEED = 3
SHARD2 = "model-00002-of-00003.safetensors"


@pytest.fixture(scope="module")
def cfg() -> RuntimeConfig:
    return RuntimeConfig.load("llada2-tiny")


@pytest.fixture(scope="module")
def state(cfg) -> dict[str, torch.Tensor]:
    return random_state(cfg, SEED)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, cfg, state) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", cfg, state, shards=3)


@pytest.fixture
def copy(ckpt, tmp_path) -> Path:
    """A private copy of the checkpoint to damage."""
    return Path(shutil.copytree(ckpt, tmp_path / "tiny"))


def _error(path, cfg=None) -> str:
    with pytest.raises(TideError) as info:
        load_checkpoint(path, cfg, device="cpu", dtype=torch.float32)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_layout_is_hugging_face(ckpt, state):
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == ["config.json", "model-00001-of-00003.safetensors", SHARD2,
                     "model-00003-of-00003.safetensors", INDEX_FILE]
    index = json.loads((ckpt / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "llada2_moe"


def test_round_trip_gives_identical_logits(ckpt, cfg, state):
    non_expert, experts = load_checkpoint(ckpt, device="cpu", dtype=torch.float32)
    assert not experts.pinned and len(experts) == cfg.spec.num_moe_layers
    assert experts[0].gate.shape == (32, 64, 128) and experts[0].down.shape == (32, 128, 64)
    assert torch.equal(experts[2].up[17], state["model.layers.3.mlp.experts.17.up_proj.weight"])
    for name, t in non_expert.items():
        assert torch.equal(t, state[name]), name
    # the same seed in memory (random_weights builds the experts stacked) gives the same tensors
    ne_mem, ex_mem = random_weights(cfg, SEED)
    for a, b in zip(experts.layers, ex_mem.layers):
        assert torch.equal(a.gate, b.gate) and torch.equal(a.up, b.up) and torch.equal(a.down, b.down)
    loaded = LLaDA2MoE.from_state(cfg, non_expert, LocalExperts(experts))
    memory = LLaDA2MoE.from_state(cfg, ne_mem, LocalExperts(ex_mem))
    ids = torch.randint(0, 510, (24,), generator=torch.Generator().manual_seed(0))
    pos, mask = torch.arange(24), block_causal_mask(24, 8)
    assert torch.equal(loaded(ids, pos, mask), memory(ids, pos, mask))


def test_single_file_and_split_state(tmp_path, cfg, state):
    d = write_checkpoint(tmp_path / "one", cfg, state, shards=1)
    assert not (d / INDEX_FILE).exists() and (d / "model.safetensors").is_file()
    non_expert, experts = load_checkpoint(d, cfg, dtype=torch.bfloat16)
    assert non_expert["lm_head.weight"].dtype == torch.bfloat16 and experts.dtype == torch.bfloat16
    # the reference holds the expert bias in the model dtype: in bf16 it is rounded to bf16
    bias = non_expert["model.layers.1.mlp.gate.expert_bias"]
    assert bias.dtype == torch.bfloat16 and torch.equal(bias, state["model.layers.1.mlp.gate.expert_bias"].bfloat16())
    ne2, ex2 = split_state(state, cfg, dtype=torch.bfloat16)
    assert torch.equal(ex2[1].down, experts[1].down) and torch.equal(ne2["lm_head.weight"], non_expert["lm_head.weight"])


def test_truncated_config_loads_first_layers(ckpt):
    short = RuntimeConfig.load(ckpt, num_layers=3)
    non_expert, experts = load_checkpoint(ckpt, short, dtype=torch.float32)
    assert len(experts) == 2 and not any(n.startswith("model.layers.3.") for n in non_expert)
    LLaDA2MoE.from_state(short, non_expert, LocalExperts(experts))(torch.arange(4), torch.arange(4))


def test_missing_directory_and_config(tmp_path, copy):
    assert "does not exist" in _error(tmp_path / "nope")
    (copy / "config.json").unlink()
    assert "no config.json" in _error(copy)


def test_unsupported_model_type(copy):
    raw = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**raw, "model_type": "llama"}))
    assert "unsupported model_type 'llama'" in _error(copy)


def test_missing_shard(copy):
    (copy / SHARD2).unlink()
    msg = _error(copy)
    assert SHARD2 in msg and "missing" in msg


def test_truncated_shard(copy):
    data = (copy / SHARD2).read_bytes()
    (copy / SHARD2).write_bytes(data[: len(data) // 2])
    msg = _error(copy)
    assert SHARD2 in msg and msg.startswith("cannot read shard")


def test_garbage_shard_header(copy):
    (copy / SHARD2).write_bytes(b"\xff" * 64)
    assert SHARD2 in _error(copy)


def test_wrong_shape(tmp_path, cfg, state):
    bad = dict(state)
    bad["model.layers.2.mlp.experts.5.down_proj.weight"] = torch.zeros(128, 65)
    d = write_checkpoint(tmp_path / "bad", cfg, bad, shards=3, check=False)
    msg = _error(d)
    assert "model.layers.2.mlp.experts.5.down_proj.weight" in msg and "[128, 65]" in msg and "[128, 64]" in msg


def test_missing_and_unexpected_tensor(tmp_path, cfg, state):
    dropped = {k: v for k, v in state.items() if k != "model.layers.2.attention.key_layernorm.weight"}
    d = write_checkpoint(tmp_path / "drop", cfg, dropped, shards=2, check=False)
    assert "missing tensor model.layers.2.attention.key_layernorm.weight" in _error(d)
    extra = {**state, "model.layers.1.mlp.experts.32.up_proj.weight": torch.zeros(64, 128)}
    d = write_checkpoint(tmp_path / "extra", cfg, extra, shards=2, check=False)
    # as Hugging Face does: listed in a warning and skipped; --strict refuses it
    with pytest.warns(UserWarning, match=r"1 tensor\(s\) the model does not use, skipped: "
                                         r"model.layers.1.mlp.experts.32.up_proj.weight"):
        non_expert, experts = load_checkpoint(d, cfg, device="cpu", dtype=torch.float32)
    assert len(experts) == cfg.spec.num_moe_layers and "model.layers.1.mlp.experts.32.up_proj.weight" not in non_expert
    with pytest.raises(TideError, match="unexpected tensor model.layers.1.mlp.experts.32.up_proj.weight") as exc:
        load_checkpoint(d, cfg, device="cpu", dtype=torch.float32, strict=True)
    assert "\n" not in str(exc.value)
    with pytest.raises(TideError, match="missing tensor"):
        write_checkpoint(tmp_path / "checked", cfg, dropped)


def test_missing_index(copy):
    (copy / INDEX_FILE).unlink()
    msg = _error(copy)
    assert INDEX_FILE in msg and "3 shard file(s)" in msg


def test_index_names_tensor_absent_from_shard(copy):
    index = json.loads((copy / INDEX_FILE).read_text())
    index["weight_map"]["lm_head.weight"] = SHARD2 if index["weight_map"]["lm_head.weight"] != SHARD2 \
        else "model-00001-of-00003.safetensors"
    (copy / INDEX_FILE).write_text(json.dumps(index))
    msg = _error(copy)
    assert "lm_head.weight" in msg and "absent" in msg


def test_malformed_index(copy):
    (copy / INDEX_FILE).write_text("{not json")
    assert "malformed" in _error(copy)


def test_config_mismatch(ckpt):
    other = RuntimeConfig.load("llada2.0-mini")
    assert "different network" in _error(ckpt, other)


def test_pinning_falls_back_with_warning(cfg):
    if torch.cuda.is_available():
        pytest.skip("pinning works here; the fallback needs a machine without CUDA")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        experts = ExpertWeights.allocate(cfg, torch.float32, pin=True)
    assert not experts.pinned
    assert any("pageable" in str(w.message) and "half" in str(w.message) for w in caught)
