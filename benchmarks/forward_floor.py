"""How fast could one evaluation's forward + KL be (issue 19's ≤ 25 ms goal)? transformers' compiled
forward (FastForward, mask-free: what the search runs) beside a minimal Llama forward of the same
weights written as few kernels as possible — q/k/v in one GEMM, gate/up in one GEMM, SDPA causal
with grouped keys in place, no module hooks or layout copies beyond the attention's — both compiled
in the same mode, both followed by the search's KL (metrics.topk_kl_sum).

The minimal forward is a yardstick, not a path of the search (the search writes levels into the
model's own parameters, which it does not read): if it is much faster, the time is in how the
model's forward is laid out, and fusing the projections in the model is worth building; if not,
the remaining time is in the GEMMs and the KL themselves. Its logits are checked against the
model's before it is timed. Weights are random, shapes are SmolLM2-135M's (attention_paths.py).

Each run is PATH:MODE:NxL (path: transformers or minimal; mode: a compile mode), in the order given.

  # on one H200 (shape-only: no bring-up; ≈ 4 min):
  python benchmarks/forward_floor.py --device cuda --deadline-s 230 --out $OUT/forward_floor
  # CPU smoke (eager, 1 layer):
  python benchmarks/forward_floor.py --device cpu --layers 1 --runs transformers:off:2x32,minimal:off:2x32 \\
      --repeats 1 --out runs/forward-floor-cpu
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's evo, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention_paths import (  # noqa: E402
    measure, model_and_rows, profile_lines, run_parts, shape_arguments, table, write_report)
from evo.evaluate.fastforward import (  # noqa: E402
    GRAPH_MODES, KL_MODE_OF, FastForward, resolve_compile_mode)
from evo.evaluate.metrics import topk_kl_sum  # noqa: E402

DEFAULT_RUNS = ("transformers:reduce-overhead:64x512,minimal:reduce-overhead:64x512,"
                "transformers:max-autotune:64x512,minimal:max-autotune:64x512")


class MinimalLlama:
    """A Llama causal LM's logits from its weights, with the projections that share an input
    concatenated into one GEMM (copies made once, here: later changes to the model are not seen)."""

    def __init__(self, model) -> None:
        config = model.config
        decoder = model.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.embed = decoder.embed_tokens.weight
        self.norm = decoder.norm.weight
        self.head = model.lm_head.weight
        self.rotary = decoder.rotary_emb
        self.layers = []
        for layer in decoder.layers:
            attention, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            self.layers.append((layer.input_layernorm.weight, qkv, attention.o_proj.weight,
                                layer.post_attention_layernorm.weight, gate_up, mlp.down_proj.weight))

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        x = F.embedding(ids, self.embed)
        positions = torch.arange(length, device=ids.device)[None]
        cos, sin = (part[:, None] for part in self.rotary(x, positions))  # [1, 1, L, D]
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for norm_in, qkv_w, o_w, norm_post, gate_up_w, down_w in self.layers:
            qkv = F.linear(self._rms(x, norm_in), qkv_w)
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q = self._rotate(q.view(batch, length, self.heads, self.head_dim).transpose(1, 2), cos, sin)
            k = self._rotate(k.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            v = v.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
            x = x + F.linear(attended.transpose(1, 2).reshape(batch, length, q_size), o_w)
            gate, up = F.linear(self._rms(x, norm_post), gate_up_w).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, down_w)
        return F.linear(self._rms(x, self.norm), self.head)


class MinimalForward:
    """FastForward's kl_sum_of for MinimalLlama: the forward and the KL compiled as FastForward does."""

    def __init__(self, minimal: MinimalLlama, mode: str, device: torch.device) -> None:
        self.mode = resolve_compile_mode(mode, device)
        self.compiled = self.mode != "off" and device.type == "cuda"
        self.forward = torch.compile(minimal.__call__, mode=self.mode, dynamic=False) if self.compiled else minimal
        kl_mode = KL_MODE_OF.get(self.mode, self.mode)
        self.kl = torch.compile(topk_kl_sum, mode=kl_mode, dynamic=False) if self.compiled else topk_kl_sum
        self.attention = "minimal: fused q/k/v and gate/up GEMMs, causal SDPA"
        self.fallback = None

    @torch.no_grad()
    def kl_sum_of(self, ids: torch.Tensor, *rows: torch.Tensor) -> torch.Tensor:
        if self.compiled and self.mode in GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()
        return self.kl(self.forward(ids), *rows)


def parse_run(text: str) -> tuple[str, tuple[str, str], str, int, int]:
    """PATH:MODE:NxL → (name, key (path, mode), mode, sequences, tokens)."""
    run = run_parts(text, "PATH:MODE:NxL", ("transformers", "minimal"))
    return text, (run["PATH"], run["MODE"]), run["MODE"], run["sequences"], run["tokens"]


def main(argv: list[str] | None = None) -> int:
    args = shape_arguments(__doc__.splitlines()[0], runs=DEFAULT_RUNS, run_form="PATH:MODE:NxL", deadline_s=230.0,
                           compile_need_s=60.0, out="runs/forward-floor").parse_args(argv)
    began = time.perf_counter()
    device = torch.device(args.device)
    runs = [parse_run(text) for text in args.runs.split(",") if text]
    model, dtype, ids, rows = model_and_rows(args.layers, device, args.seed, runs, args.noise)
    minimal = MinimalLlama(model)
    with torch.no_grad():  # the yardstick computes the model's logits, or its times mean nothing
        probe = ids[:2, :64]
        agreement = float((minimal(probe).float() - model(input_ids=probe).logits.float()).abs().max())
    if agreement > (0.5 if dtype == torch.bfloat16 else 1e-3):
        raise SystemExit(f"the minimal forward's logits differ from the model's by {agreement:.3g}: not timed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def forward_of(key: tuple[str, str]):
        path, mode = key
        return FastForward(model, mode, device) if path == "transformers" else MinimalForward(minimal, mode, device)

    def twin_of(name: str) -> str | None:  # the minimal forward against transformers' in the same mode and shape
        path, mode, shape = name.split(":")
        return f"transformers:{mode}:{shape}" if path == "minimal" else None

    results = measure(runs, forward_of, ids, rows, args, device, began,
                      lambda done: write_report(out, "forward_floor", done, agreement=agreement))
    write_report(out, "forward_floor", results,
                 f"{args.layers} layers of SmolLM2-135M's shapes, random weights, {dtype}, {device}; forward + KL of "
                 f"one evaluation; the minimal forward's logits are within {agreement:.3g} of the model's (max abs, "
                 "2 × 64 tokens)", table(results, "forward", "transformers ms / minimal ms", twin_of) + profile_lines(results),
                 agreement=agreement)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
