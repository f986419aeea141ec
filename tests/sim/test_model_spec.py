"""ModelSpec: published sizes of LLaDA2.0-mini/flash, hand-computed operator costs, loading and its errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from offload.errors import TideError
from offload.model_spec import MODEL_PRESETS, ModelSpec

GIB, MIB = 2**30, 2**20


def _err(excinfo, *needles):
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, TideError) and "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


@pytest.fixture(scope="module")
def mini() -> ModelSpec:
    return ModelSpec.load("llada2.0-mini")


@pytest.fixture(scope="module")
def flash() -> ModelSpec:
    return ModelSpec.load("llada2.0-flash")


# ---- published sizes (shared/reference/LLaDA2-MoE.md) ------------------------------------------------------

def test_mini_sizes(mini):
    assert mini.num_moe_layers == 19 and mini.num_experts == 256 and mini.top_k == 8
    assert mini.expert_bytes == 6 * MIB
    assert mini.routed_expert_bytes == 28.5 * GIB
    assert mini.non_expert_bytes / GIB == pytest.approx(1.78, abs=0.005)
    assert mini.total_params / 1e9 == pytest.approx(16.3, abs=0.05)
    assert mini.active_params / 1e9 == pytest.approx(1.43, abs=0.005)
    assert mini.token_bytes == 2048 * 2


def test_flash_sizes(flash):
    assert flash.num_moe_layers == 31 and flash.num_experts == 256 and flash.top_k == 8
    assert flash.expert_bytes == 24 * MIB
    assert flash.routed_expert_bytes == 186 * GIB
    assert flash.non_expert_bytes / GIB == pytest.approx(5.65, abs=0.005)
    assert flash.total_params / 1e9 == pytest.approx(103, abs=0.5)
    assert flash.active_params / 1e9 == pytest.approx(6.15, abs=0.005)


def test_summary_matches_properties(mini):
    s = mini.summary()
    assert s["expert_mib"] == 6.0 and s["routed_expert_gib"] == 28.5 and s["moe_layers"] == 19
    assert s["config_hash"] == mini.config_hash and s["name"] == "llada2.0-mini"


def test_config_hash(mini, flash):
    assert mini.config_hash != flash.config_hash
    assert len(mini.config_hash) == 16 and int(mini.config_hash, 16) >= 0
    # stable: traces on disk carry it, so its definition must not drift
    assert mini.config_hash == ModelSpec.load("llada2.0-mini").config_hash == "e55a80e720a0a528"
    assert flash.config_hash == "540d59f221d50291"
    # covers the shape only: name and non-shape fields do not change it, a shape field does
    cfg = dict(mini.raw_config)
    assert ModelSpec.from_config({**cfg, "rope_theta": 1}, name="x").config_hash == mini.config_hash
    assert ModelSpec.from_config({**cfg, "num_experts_per_tok": 4}).config_hash != mini.config_hash


# ---- hand-computed operator costs on a tiny model (h 16, i 8, I 32, H 2, K 1, d 8, E 8, k 2, V 64, b 2) ------

def test_tiny_sizes(tiny_model):
    m = tiny_model
    assert m.expert_params == 3 * 16 * 8 == 384 and m.expert_bytes == 768
    assert m.num_moe_layers == 2 and m.moe_layer_expert_bytes == 8 * 768 and m.routed_expert_bytes == 2 * 8 * 768
    # attention (2 + 2) 8 16 + 2 8 16 + 2 8 = 784; per layer + 2 norms of 16 = 816; x 3 layers = 2448
    # dense MLP 3 16 32 = 1536 (1 layer); MoE non-routed 8 16 + 8 + 3 16 8 = 520 (x 2);
    # embeddings 2 64 16; final norm 16
    assert m.non_expert_params == 2448 + 1536 + 2 * 520 + 2048 + 16 == 7088
    assert m.total_params == 7088 + 2 * 8 * 384
    assert m.active_params == 7088 + 2 * 2 * 384


def test_expert_cost(tiny_model):
    c = tiny_model.expert_cost(5)
    assert c.flops == 6 * 5 * 16 * 8 == 3840
    assert c.bytes == 2 * (384 + 2 * 5 * 16) == 1088
    zero = tiny_model.expert_cost(0)
    assert zero.flops == 0 and zero.bytes == 0  # an expert with no token is not run
    v = tiny_model.expert_cost(np.array([[0, 1], [2, 3]]))
    assert v.flops.shape == (2, 2) and v.bytes.shape == (2, 2)
    np.testing.assert_allclose(v.flops, 6 * np.array([[0, 1], [2, 3]]) * 16 * 8)
    np.testing.assert_allclose(v.bytes, [[0, 2 * (384 + 32)], [2 * (384 + 64), 2 * (384 + 96)]])


def test_attention_cost(tiny_model):
    c = tiny_model.attention_cost(3, 10)
    # 2 n h (H + 2K) d + 4 n c H d + 2 n H d h = 3072 + 1920 + 1536
    assert c.flops == 2 * 3 * 16 * 4 * 8 + 4 * 3 * 10 * 2 * 8 + 2 * 3 * 2 * 8 * 16 == 6528
    # weights 784 params + b (2 n h + 2 c K d)
    assert c.bytes == 2 * 784 + 2 * (2 * 3 * 16 + 2 * 10 * 1 * 8) == 2080
    v = tiny_model.attention_cost(np.array([1, 3]), np.array([10, 10]))
    assert v.flops[1] == 6528 and v.flops.shape == (2,)


def test_other_operator_costs(tiny_model):
    m = tiny_model
    r = m.router_cost(4)
    assert (r.flops, r.bytes) == (2 * 4 * 16 * 8, 2 * 8 * 16 + 4 * 4 * 8)
    s = m.shared_expert_cost(4)
    assert (s.flops, s.bytes) == (6 * 4 * 16 * 8, 2 * (384 + 2 * 4 * 16))
    d = m.dense_mlp_cost(2)
    assert (d.flops, d.bytes) == (6 * 2 * 16 * 32, 2 * (3 * 16 * 32 + 2 * 2 * 16))
    h = m.lm_head_cost(1)
    assert (h.flops, h.bytes) == (2 * 16 * 64, 2 * (64 * 16 + 16) + 4 * 64)
    total = r + s
    assert total.flops == r.flops + s.flops and total.bytes == r.bytes + s.bytes
    no_shared = ModelSpec.from_config({**m.raw_config, "num_shared_experts": 0})
    assert no_shared.shared_expert_cost(4).bytes == 0


def test_mini_expert_cost_matches_published_size(mini):
    c = mini.expert_cost(1)
    assert c.flops == 6 * 2048 * 512
    assert c.bytes == 6 * MIB + 2 * 2 * 2048


# ---- loading -----------------------------------------------------------------------------------------------

def test_presets_load():
    assert {"llada2.0-mini", "llada2.0-flash"} <= set(MODEL_PRESETS)
    specs = [ModelSpec.load(name) for name in MODEL_PRESETS]
    assert [s.name for s in specs] == list(MODEL_PRESETS)
    assert len({s.config_hash for s in specs}) == len(specs)  # distinct shapes, distinct hashes


def test_load_config_file_and_directory(tmp_path, mini):
    d = tmp_path / "LLaDA2.0-mini-local"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(mini.raw_config)))
    from_dir = ModelSpec.load(d)
    from_file = ModelSpec.load(str(d / "config.json"))
    assert from_dir == dataclasses.replace(mini, name="LLaDA2.0-mini-local")
    assert from_dir.name == from_file.name == "LLaDA2.0-mini-local"
    assert from_dir.config_hash == from_file.config_hash == mini.config_hash
    other = tmp_path / "my-model.json"
    other.write_text(json.dumps(dict(mini.raw_config)))
    assert ModelSpec.load(other).name == "my-model"


def test_head_dim_defaults_to_hidden_over_heads(tiny_model):
    cfg = {k: v for k, v in tiny_model.raw_config.items() if k != "head_dim"}
    assert ModelSpec.from_config(cfg).head_dim == 16 // 2


def test_dtype_bytes(tiny_model):
    assert ModelSpec.from_config({**tiny_model.raw_config, "dtype": "float32"}).expert_bytes == 4 * 384
    assert ModelSpec.from_config({k: v for k, v in tiny_model.raw_config.items() if k != "dtype"}).dtype_bytes == 2


# ---- errors ------------------------------------------------------------------------------------------------

_DROP = object()


def _cfg(tiny_model, **changes):
    cfg = dict(tiny_model.raw_config)
    for k, v in changes.items():
        if v is _DROP:
            cfg.pop(k)
        else:
            cfg[k] = v
    return cfg


@pytest.mark.parametrize("changes,needles", [
    ({"model_type": "llama"}, ("unsupported model_type 'llama'",)),
    ({"model_type": _DROP}, ("unsupported model_type None",)),
    ({"num_experts": _DROP}, ("lacks field(s): num_experts",)),
    ({"num_experts": _DROP, "vocab_size": _DROP}, ("num_experts", "vocab_size")),
    ({"num_experts_per_tok": 9}, ("num_experts_per_tok exceeds num_experts",)),
    ({"hidden_size": "16"}, ("hidden_size must be a non-negative integer",)),
    ({"hidden_size": 16.0}, ("hidden_size must be a non-negative integer",)),
    ({"hidden_size": True}, ("hidden_size",)),
    ({"num_experts": 0}, ("num_experts must be positive",)),
    ({"num_attention_heads": 0, "head_dim": _DROP}, ("num_attention_heads must be positive",)),
    ({"first_k_dense_replace": 3}, ("no MoE layer",)),
    ({"num_key_value_heads": 3, "num_attention_heads": 4}, ("multiple of num_key_value_heads",)),
    ({"n_group": 3}, ("n_group",)),
    ({"dtype": "int4"}, ("unsupported dtype 'int4'",)),
])
def test_bad_config(tiny_model, changes, needles):
    with pytest.raises(TideError) as ei:
        ModelSpec.from_config(_cfg(tiny_model, **changes))
    _err(ei, *needles)


def test_config_not_an_object():
    with pytest.raises(TideError) as ei:
        ModelSpec.from_config([1, 2])  # type: ignore[arg-type]
    _err(ei, "JSON object")


def test_malformed_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "llada2_moe",\n "hidden_size": }')
    with pytest.raises(TideError) as ei:
        ModelSpec.load(p)
    _err(ei, "malformed config.json", str(p))
    with pytest.raises(TideError) as ei:
        ModelSpec.load(tmp_path)  # the directory holding it
    _err(ei, "malformed config.json")
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TideError) as ei:
        ModelSpec.load(p)
    _err(ei, "malformed config.json")


def test_unknown_preset(tmp_path):
    with pytest.raises(TideError) as ei:
        ModelSpec.load("llada2.0-huge")
    _err(ei, "unknown model 'llada2.0-huge'", "llada2.0-mini")
    with pytest.raises(TideError) as ei:
        ModelSpec.load(tmp_path)  # a directory without config.json
    _err(ei, "is a directory without a config.json")


def test_unsupported_model_type_from_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama", "hidden_size": 2048}))
    with pytest.raises(TideError) as ei:
        ModelSpec.load(p)
    _err(ei, "unsupported model_type 'llama'", "supported: llada2_moe, ", "mixtral")
