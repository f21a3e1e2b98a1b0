"""Zero-shot accuracy of several models or artifacts on the same items, side by side, through
`evo eval --tasks ... --json` (one process per model, so each is loaded exactly as a user would).

    python benchmarks/zeroshot_table.py --device cuda --limit 2000 --tasks arc_easy,piqa,hellaswag \
        --models dense=smollm2-135m "uniform 4-bit=runs/u4" "uniform 3-bit=runs/u3" "evo=runs/x/export/artifact" \
        --out runs/zeroshot

Every row scores the first --limit items of each task (the same items for every model). For each
model it also reads the artifact's bytes (from its manifest; a model that is not an artifact shows -).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MB = 1_000_000


def evaluate(spec: str, args) -> dict:
    command = [sys.executable, "-m", "evo", "eval", spec, "--tasks", args.tasks, "--json", "--device", args.device,
               "--batch-size", str(args.batch_size)]
    if args.limit:
        command += ["--limit", str(args.limit)]
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"evo eval {spec} failed:\n{done.stderr[-2000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["seconds"] = time.perf_counter() - tic
    manifest = Path(spec) / "manifest.json"
    record["bytes"] = json.loads(manifest.read_text())["total_bytes"] if manifest.is_file() else None
    return record


def render(rows: dict[str, dict], tasks: list[str], limit: int | None) -> str:
    lines = [f"zero-shot, lm-eval prompts and scoring, first {limit or 'all'} items per task; acc / acc_norm (%), "
             "± stderr of acc_norm (acc for tasks without acc_norm)"]
    header = f"{'model':<22} {'MB':>9} " + " ".join(f"{t:>22}" for t in tasks) + f" {'mean':>7}"
    lines += [header, "-" * len(header)]
    for name, record in rows.items():
        cells, means = [], []
        for task in tasks:
            r = record["tasks"][task]
            main = r["acc_norm"] if r["acc_norm"] is not None else r["acc"]
            err = r["acc_norm_stderr"] if r["acc_norm"] is not None else r["acc_stderr"]
            norm = f"{100 * r['acc_norm']:.1f}" if r["acc_norm"] is not None else "-"
            cells.append(f"{100 * r['acc']:.1f} / {norm} ±{100 * err:.1f}")
            means.append(main)
        mb = f"{record['bytes'] / MB:.3f}" if record["bytes"] else "-"
        lines.append(f"{name:<22} {mb:>9} " + " ".join(f"{c:>22}" for c in cells) + f" {100 * sum(means) / len(means):>7.1f}")
    n = {t: next(iter(rows.values()))["tasks"][t]["n"] for t in tasks}
    lines.append("items: " + ", ".join(f"{t} {n[t]}" for t in tasks) + "; mean = of acc_norm (acc where none)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="NAME=SPEC (alias, model dir or artifact dir)")
    parser.add_argument("--tasks", default="arc_easy,piqa,hellaswag")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="evo eval --batch-size (pairs per batch = 4x)")
    parser.add_argument("--out", default="runs/zeroshot")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for item in args.models:
        name, _, spec = item.partition("=")
        path = out / f"{name.replace(' ', '_').replace('/', '_')}.json"
        if path.exists():
            rows[name] = json.loads(path.read_text())
            continue
        rows[name] = evaluate(spec, args)
        path.write_text(json.dumps(rows[name], indent=2) + "\n")
        print(f"{name}: done in {rows[name]['seconds']:.0f} s", flush=True)
    table = render(rows, args.tasks.split(","), args.limit)
    print(table)
    (out / "table.txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
