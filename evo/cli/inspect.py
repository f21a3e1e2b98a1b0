"""`evo inspect`: a model's tensors as a config names them: role, shape, the config section that
sets each one, and which settings it allows."""

from __future__ import annotations

import argparse

from rich.table import Table

from evo.cli.ui import add_model_options, load_model_with_progress, out


def add_parser(sub) -> None:
    ins = sub.add_parser("inspect", help="list a model's tensors: roles, shapes, config sections, allowed settings")
    add_model_options(ins)
    ins.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    from evo.compress.config import tensor_entries

    loaded = load_model_with_progress(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    info = loaded.info
    entries = tensor_entries(info)
    if args.json:
        print(json.dumps({"model": info.model_id, "architecture": info.architecture, "layers": info.num_layers,
                          "tied_embeddings": info.tied_embeddings,
                          "tensors": [{"name": e.name, "role": e.role, "shape": list(e.shape), "section": e.section,
                                       "allowed": e.allowed()} for e in entries]}))
        return 0
    table = Table(title=f"{info.model_id}: {info.architecture}, {info.num_layers} decoder layers, "
                        f"{'tied' if info.tied_embeddings else 'untied'} embeddings")
    for name in ("tensor", "role", "shape", "config section", "allowed settings"):
        table.add_column(name, overflow="fold")
    for e in entries:
        table.add_row(e.name, e.role, "×".join(map(str, e.shape)), e.section, e.allowed())
    out.print(table)
    out.print(f"{len(entries)} tensors; name any of them under [tensors.\"NAME\"] in a config to override its section")
    return 0
