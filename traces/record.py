"""Record a schema-v1 autoregressive trace from a transformers MoE model while it runs its own ``generate()``.

    python -m traces.record MODEL_DIR (--prompt-ids 1,2,3 | --prompt TEXT) --max-new-tokens N --out TRACE.npz
        [--ignore-eos] [--dtype float32|bfloat16|float16]
    python -m traces.record --random-from PRESET [--layers 2] ...      a tiny random model (nothing downloaded)

How. Every MoE layer's router (``mlp.gate`` in Qwen2/Qwen3-MoE, OLMoE and DeepSeek; ``mlp.router`` in gpt-oss;
``block_sparse_moe.gate`` or ``mlp.gate`` in Mixtral, by transformers version) is found by name and shape (a
module of decoder layer i named ``gate`` or ``router`` whose weight is [E, hidden]: the shared-expert gate of
Qwen2, [1, hidden], is not one) and gets a forward hook. In transformers 5 each router returns
``(logits, weights, ids)`` and the experts run on exactly those ``ids``; the hook keeps them, so DeepSeek-V3's
grouped, bias-corrected selection and gpt-oss's top-k of biased logits are taken as the model routed. A router
that returns logits only (older transformers) is reproduced: the k largest logits (softmax top-k: softmax is
monotonic), for DeepSeek with ``n_group > 1`` the group-limited choice (groups scored by their best expert
(V2) or their two best sigmoid scores plus the correction bias (V3, ``noaux_tc``), the best ``topk_group``
groups kept).

The model then runs ``generate(max_new_tokens=N, do_sample=False)`` (greedy) on one prompt with its KV cache:
forward call 0 routes the P prompt tokens, call j >= 1 the one token generated at call j - 1. The last
generated token is never forwarded (nothing reads its logits), so N new tokens take N forward calls.

Trace (mode "autoregressive", block_length 1, origin kind "recorded"):
  call 0       kind 2 (prefill), block -1, tokens_forwarded = context_tokens = P, nothing committed
  call j >= 1  kind 3 (decode), block j - 1, 1 token forwarded and committed, context_tokens = P + j
gen_length = the decode steps = N - 1 (as the importers count: a prefill commits nothing in schema v1, though
its logits give the first new token; origin.new_tokens records N). counts[s, l, e] and per-token topk_ids
[tokens, L, k] come from the hooked ids; the model spec (shape and config_hash) from the model's config through
:meth:`offload.model_spec.ModelSpec.from_config`.

LLaDA2 (model_type llada2_moe) generates by block diffusion in this project's runtime, not with
``generate()``: record it with ``python -m runtime.generate --trace-out``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offload.errors import TideError, run_cli
from offload.model_spec import MODEL_PRESETS, ModelSpec
from offload.trace import Trace, model_header
from traces.core import autoregressive_trace, count_experts

RECORDABLE = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.*\.)?(gate|router)$")


def check_recordable(model_type: Any) -> None:
    """One-line TideError unless transformers' generate() of this family can be recorded here."""
    if model_type in RECORDABLE:
        return
    if model_type == "llada2_moe":
        raise TideError("LLaDA2 (llada2_moe) generates by block diffusion, not generate(): record it through this "
                        "project's runtime, python -m runtime.generate --trace-out TRACE.npz")
    if model_type == "llada_moe":
        raise TideError("LLaDA-MoE (llada_moe) is a diffusion model without an autoregressive generate(): "
                        "nothing to record here")
    raise TideError(f"unsupported model type {model_type!r} for recording (supported: {', '.join(RECORDABLE)})")


# ---- tiny random models (tests, demos) --------------------------------------------------------------------------

def tiny_config(preset: str, layers: int = 2, hidden: int = 64) -> dict[str, Any]:
    """A preset's config.json shrunk to ``layers`` decoder layers of width ``hidden`` (small heads, expert and
    vocabulary sizes), keeping its family, experts, top-k and routing options: for building a random model with
    ``AutoModelForCausalLM.from_config`` without downloading anything."""
    if preset not in MODEL_PRESETS:
        raise TideError(f"unknown model preset {preset!r} (presets: {', '.join(MODEL_PRESETS)})")
    if not 1 <= layers <= 8 or hidden % 16 or not 32 <= hidden <= 512:
        raise TideError(f"tiny model needs 1..8 layers and a width in 32..512 divisible by 16, got {layers}, {hidden}")
    from importlib import resources

    cfg = json.loads(resources.files("offload.presets.models").joinpath(MODEL_PRESETS[preset]).read_text())
    check_recordable(cfg.get("model_type"))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("quantization_config", "rope_scaling")}
    heads = 4
    cfg.update(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=2, head_dim=hidden // heads,
               num_hidden_layers=layers, vocab_size=256, max_position_embeddings=1024, torch_dtype="float32",
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    for key, width in (("intermediate_size", 2 * hidden), ("moe_intermediate_size", hidden // 2),
                       ("shared_expert_intermediate_size", hidden)):
        if cfg.get(key):
            cfg[key] = width
    if cfg["model_type"] == "mixtral" or cfg["model_type"] == "olmoe" or cfg["model_type"] == "gpt_oss":
        cfg["intermediate_size"] = hidden // 2  # these name the expert width intermediate_size
    if cfg["model_type"] in ("qwen2_moe", "qwen3_moe"):
        cfg.update(mlp_only_layers=[], decoder_sparse_step=1, max_window_layers=layers)
    if cfg["model_type"].startswith("deepseek"):
        cfg.update(first_k_dense_replace=min(int(cfg.get("first_k_dense_replace", 0)), layers - 1),
                   kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, num_key_value_heads=heads)
        cfg["head_dim"] = 8  # transformers' MLA takes head_dim as the rope part
        if cfg.get("q_lora_rank"):
            cfg["q_lora_rank"] = 32
    if cfg["model_type"] == "gpt_oss":
        cfg["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        cfg["sliding_window"] = 16
    return cfg


def build_random_model(config: dict[str, Any], seed: int = 0) -> Any:
    """A random-weight transformers model from a config dict (float32, eval mode)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    c = dict(config)
    conf = AutoConfig.for_model(c.pop("model_type"), **c)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(conf, dtype=torch.float32)
    return model.eval()


# ---- routers and hooks ----------------------------------------------------------------------------------------

def find_routers(model: Any, spec: ModelSpec) -> dict[int, Any]:
    """{MoE layer index m: router module} for the spec's MoE layers (module docstring: how they are found)."""
    by_layer: dict[int, list[tuple[str, Any]]] = {}
    for name, mod in model.named_modules():
        m = _LAYER.search(name)
        w = getattr(mod, "weight", None)
        if m is None or w is None or getattr(w, "ndim", 0) != 2 or int(w.shape[0]) != spec.num_experts:
            continue
        by_layer.setdefault(int(m.group(1)), []).append((name, mod))
    found = {}
    for m_idx, layer in enumerate(spec.moe_layer_indices):
        cands = by_layer.get(layer, [])
        if len(cands) > 1:
            raise TideError(f"decoder layer {layer} has {len(cands)} router-like modules "
                            f"({', '.join(n for n, _ in cands)}): cannot tell which routes the experts")
        if cands:
            found[m_idx] = cands[0][1]
    if not found:
        raise TideError(f"no MoE layers found in the model: no module named gate or router with {spec.num_experts} "
                        "outputs under a decoder layer")
    missing = [spec.moe_layer_indices[m] for m in range(spec.num_moe_layers) if m not in found]
    if missing:
        raise TideError(f"no router found in decoder layer(s) {', '.join(map(str, missing[:8]))} of the "
                        f"{spec.num_moe_layers} MoE layers the config describes")
    return found


def config_dict(config: Any) -> dict[str, Any]:
    """A transformers config as the config.json keys ModelSpec reads: ``to_dict()`` plus the aliases of its
    ``attribute_map`` (transformers 5 stores Qwen3-MoE's num_experts as num_local_experts, for one)."""
    d = config.to_dict()
    for alias in getattr(config, "attribute_map", {}) or {}:
        if alias not in d and hasattr(config, alias):
            d[alias] = getattr(config, alias)
    return d


def select_experts(logits: Any, spec: ModelSpec, router: Any = None) -> Any:
    """Top-k expert ids [tokens, k] from router logits [tokens, E] as the family selects them (module
    docstring); used only for routers that do not return their ids."""
    import torch

    x = logits.float().reshape(-1, spec.num_experts)
    k = spec.top_k
    if spec.model_type.startswith("deepseek") and spec.n_group > 1:
        G, E = spec.n_group, spec.num_experts
        if spec.model_type == "deepseek_v3" or spec.router_bias:
            bias = getattr(router, "e_score_correction_bias", None)
            scores = x.sigmoid() + (bias.float() if bias is not None else 0.0)
            group = scores.view(-1, G, E // G).topk(2, dim=-1)[0].sum(-1)
        else:
            scores = x.softmax(-1)
            group = scores.view(-1, G, E // G).max(-1).values
        keep = torch.zeros_like(group).scatter_(1, group.topk(spec.topk_group, dim=-1)[1], 1.0)
        mask = keep.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E).bool()
        return scores.masked_fill(~mask, float("-inf")).topk(k, dim=-1)[1]
    return x.topk(k, dim=-1)[1]


@dataclass
class _Recorder:
    """Per MoE layer, the ids [tokens, k] of each router call, in call order."""

    spec: ModelSpec
    calls: list[list[np.ndarray]]

    def hook(self, m: int, router: Any) -> Any:
        import torch

        def fn(module: Any, args: Any, out: Any) -> None:
            ids = None
            if isinstance(out, (tuple, list)):
                ints = [o for o in out if isinstance(o, torch.Tensor) and not o.is_floating_point()]
                if ints:
                    ids = ints[-1]
                logits = out[0]
            else:
                logits = out
            if ids is None:
                ids = select_experts(logits, self.spec, module)
            self.calls[m].append(ids.detach().reshape(-1, ids.shape[-1]).to("cpu", torch.int64).numpy().copy())
        return router.register_forward_hook(fn)


def record_generate(model: Any, prompt_ids: Sequence[int], max_new_tokens: int, *, ignore_eos: bool = False,
                    name: str | None = None, source: str | None = None) -> tuple[Trace, list[int]]:
    """Run ``model.generate`` greedily on ``prompt_ids`` and return (the trace of its routing, the new token
    ids). ``ignore_eos``: generate all ``max_new_tokens`` even past an end-of-sequence token."""
    import torch

    config = config_dict(model.config)
    check_recordable(config.get("model_type"))
    spec = ModelSpec.from_config(config, name=name)
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise TideError("the prompt holds no token")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 2:
        raise TideError(f"max-new-tokens must be an integer >= 2 (one decode forward at least), got {max_new_tokens!r}")
    vocab = spec.vocab_size
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise TideError(f"prompt token id {bad[0]} outside the model's vocabulary 0..{vocab - 1}")
    if spec.num_experts > np.iinfo(np.int16).max + 1:
        raise TideError(f"model {spec.name} has {spec.num_experts} experts: too many for per-token ids")
    routers = find_routers(model, spec)
    rec = _Recorder(spec, [[] for _ in range(spec.num_moe_layers)])
    handles = [rec.hook(m, r) for m, r in routers.items()]
    try:
        ids = torch.tensor([prompt], dtype=torch.long, device=next(model.parameters()).device)
        kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False,
                              "attention_mask": torch.ones_like(ids), "use_cache": True}
        if ignore_eos:
            kw["min_new_tokens"] = max_new_tokens
        gen_cfg = getattr(model, "generation_config", None)
        if gen_cfg is not None and gen_cfg.pad_token_id is None:
            kw["pad_token_id"] = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else 0
        with torch.no_grad():
            out = model.generate(ids, **kw)
    finally:
        for h in handles:
            h.remove()
    new = out[0, len(prompt):].tolist()
    return _trace(spec, rec.calls, len(prompt), new, source), new


def _trace(spec: ModelSpec, calls: list[list[np.ndarray]], P: int, new: list[int], source: str | None) -> Trace:
    E, k = spec.num_experts, spec.top_k
    n_calls = {len(c) for c in calls}
    if len(n_calls) != 1:
        raise TideError(f"the MoE layers' routers ran a different number of times ({sorted(n_calls)}): the "
                        "recording does not line up")
    S = n_calls.pop()
    sizes = np.array([[c.shape[0] for c in layer] for layer in calls])  # [L, S]
    if S < 2 or (sizes != sizes[0]).any() or sizes[0, 0] != P or (sizes[0, 1:] != 1).any():
        raise TideError(f"unexpected forward calls: tokens per call {sizes[0].tolist()[:6]} (expected the prompt's "
                        f"{P}, then one per decode step); is the KV cache off?")
    if any(c.shape[1] != k for layer in calls for c in layer):
        raise TideError(f"a router chose a number of experts other than the config's top-{k}")
    topk = np.stack([np.concatenate(layer) for layer in calls], axis=1)  # [tokens, L, k]
    if topk.min() < 0 or topk.max() >= E:
        raise TideError("a router chose an expert id outside 0..E-1")
    step = np.concatenate([np.zeros(P, dtype=np.int64), np.arange(1, S)])
    j = np.arange(S)
    origin = {"kind": "recorded", "seed": None, "recorder": "traces.record", "source": source,
              "model_type": spec.model_type, "decoding": "greedy", "new_tokens": len(new),
              "output_ids": [int(t) for t in new]}
    return autoregressive_trace(model_header(spec), count_experts(topk, E, step, S), origin,
                                tokens=np.where(j >= 1, 1, P), context=np.where(j >= 1, P + j, P), committed=1,
                                prefill=True, topk_ids=topk)


# ---- loading and the command line -----------------------------------------------------------------------------

def load_model(path: str | Path, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer or None) from a local Hugging Face directory; nothing is downloaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise TideError(f"model directory {path} does not exist")
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise TideError(f"model directory {path} has no config.json")
    try:
        mtype = json.loads(cfg_path.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise TideError(f"malformed config.json in {path}: {exc}".replace("\n", " ")) from None
    check_recordable(mtype)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI's output stays one line
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dt, local_files_only=True).eval()
    tok = None
    # only a directory that ships tokenizer files has a tokenizer (transformers may otherwise hand back an empty one)
    if any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError):
            tok = None
    return model, tok


def _ids(text: str) -> list[int]:
    import argparse

    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    from offload.cli import Parser
    from offload.trace_io import write_trace
    from traces.importers import trace_summary

    ap = Parser(prog="python -m traces.record", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", default=None, help="local Hugging Face model directory")
    ap.add_argument("--random-from", default=None, metavar="PRESET",
                    help=f"instead: a tiny random model shrunk from a preset ({', '.join(MODEL_PRESETS)})")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the tiny random model (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed of the tiny random model (default 0)")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt-ids", type=_ids, default=None, help="prompt as comma-separated token ids")
    g.add_argument("--prompt", default=None, help="prompt text (needs the directory's tokenizer)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    ap.add_argument("--ignore-eos", action="store_true", help="generate all max-new-tokens even past EOS")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="weights dtype of a loaded model (default float32)")
    ap.add_argument("--out", required=True, help="trace file to write (.npz)")
    a = ap.parse_args(argv)
    if (a.model_dir is None) == (a.random_from is None):
        ap.error("give a model directory or --random-from PRESET (one of the two)")
    if a.random_from is not None:
        model, tok = build_random_model(tiny_config(a.random_from, layers=a.layers), seed=a.seed), None
        name, source = f"{a.random_from}-tiny-random", f"random:{a.random_from}:layers={a.layers}:seed={a.seed}"
    else:
        model, tok = load_model(a.model_dir, a.dtype)
        name, source = Path(a.model_dir).name, str(a.model_dir)
    if a.prompt is not None:
        if tok is None:
            raise TideError("--prompt needs a tokenizer in the model directory; give --prompt-ids instead")
        prompt = tok(a.prompt)["input_ids"]
    else:
        prompt = a.prompt_ids
    trace, _ = record_generate(model, prompt, a.max_new_tokens, ignore_eos=a.ignore_eos, name=name, source=source)
    out = write_trace(trace, a.out)
    print(f"wrote {out}: {trace_summary(trace)}")
    if a.random_from is not None:  # a model no preset names: its config, so that the trace can be replayed
        import json

        from offload.atomic_io import atomic_write_text

        cfg_path = out.with_name(out.stem + ".config.json")
        atomic_write_text(cfg_path, json.dumps(config_dict(model.config), indent=1, default=str) + "\n")
        print(f"wrote {cfg_path}: replay with python -m sim.explore --trace {out} --model {cfg_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
