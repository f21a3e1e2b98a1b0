"""llama.cpp's recipes written by evo's GGUF encoders: bytes predicted vs on disk, and perplexity of
the file loaded back through transformers (as `evo eval FILE.gguf` does).

    python benchmarks/gguf_recipes.py --device cuda --max-tokens 65536            # the table
    python benchmarks/gguf_recipes.py --recipes Q3_K_M --max-tokens 1024           # CPU smoke

Rows: each recipe (default Q2_K, Q3_K_S, Q3_K_M, Q4_K_M), with llama.cpp's token-embedding type and
with `--token-embedding-type q4_0`, fitted with the importance matrix (Σx² per input column on the
embedded calibration corpus) and, with --also-plain, without it. The source GGUF (the default
model's Q4_1 file) is measured the same way for reference. Exits 1 if any predicted size differs
from the file's size on disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from evo.data.corpus import default_stats_tokens, read_text
from evo.evaluate.perplexity import perplexity, tokenize_for_eval
from evo.gguf.export import compress_to_gguf
from evo.gguf.imatrix import collect_importance
from evo.modelio import load_model


def _ppl_of_gguf(path: Path, tokens: dict, device: str, max_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.to(device).eval()
    out = {name: perplexity(model, ids, max_tokens=max_tokens).ppl for name, ids in tokens.items()}
    del model
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--recipes", default="Q2_K,Q3_K_S,Q3_K_M,Q4_K_M")
    parser.add_argument("--embedding-types", default="recipe,q4_0",
                        help="token_embd types: 'recipe' (llama.cpp's choice) and/or a type")
    parser.add_argument("--datasets", default="wikitext2,c4")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--also-plain", action="store_true", help="also fit without the importance matrix")
    parser.add_argument("--out", default=None, help="directory for the GGUF files (default: a temp dir)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    loaded = load_model(args.model, device=args.device, dtype="float32")
    tokens = {name: tokenize_for_eval(loaded.tokenizer, read_text(name)) for name in args.datasets.split(",")}
    importance = collect_importance(loaded, default_stats_tokens(loaded.tokenizer))
    workdir = Path(args.out or tempfile.mkdtemp(prefix="evo-gguf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    names = list(tokens)
    print(f"{'file':<34} {'predicted B':>12} {'on disk B':>12} {'equal':>5} "
          + " ".join(f"{n + ' PPL':>13}" for n in names) + f" {'s':>5}")
    source = loaded.source
    if source.gguf_file:
        path = Path(source.location) / source.gguf_file
        ppl = _ppl_of_gguf(path, tokens, args.device, args.max_tokens)
        print(f"{'source ' + source.gguf_file[-20:]:<34} {'':>12} {path.stat().st_size:>12} {'':>5} "
              + " ".join(f"{ppl[n]:>13.3f}" for n in names))
    mismatches = 0
    fits = [("imatrix", importance)] + ([("plain", None)] if args.also_plain else [])
    for recipe in args.recipes.split(","):
        for embedding in args.embedding_types.split(","):
            for fit, imp in fits:
                name = f"{recipe}{'' if embedding == 'recipe' else '+emb-' + embedding} {fit}"
                path = workdir / f"{name.replace(' ', '-')}.gguf"
                tic = time.perf_counter()
                summary = compress_to_gguf(loaded, recipe, path, importance=imp, overwrite=True,
                                           token_embedding_type=None if embedding == "recipe" else embedding)
                ppl = _ppl_of_gguf(path, tokens, args.device, args.max_tokens)
                on_disk = path.stat().st_size
                equal = summary.predicted_bytes == on_disk
                mismatches += not equal
                print(f"{name:<34} {summary.predicted_bytes:>12} {on_disk:>12} {'yes' if equal else 'NO':>5} "
                      + " ".join(f"{ppl[n]:>13.3f}" for n in names) + f" {time.perf_counter() - tic:>5.0f}",
                      flush=True)
    print(f"({args.max_tokens} tokens per dataset, windows of 512; files in {workdir})")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
