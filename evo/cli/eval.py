"""`evo eval`: perplexity (the standard way) and zero-shot accuracy of a model or an artifact."""

from __future__ import annotations

import argparse

from rich.table import Table

from evo.cli.ui import add_trust_option, load_model_with_progress, out, progress_bar, step
from evo.constants import RESIDENT_MODES
from evo.errors import EvoError


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model or an artifact, the standard way")
    ev.add_argument("model", help="artifact directory, alias, local model dir, .gguf file or hub id")
    ev.add_argument("--dataset", default=None,
                    help="perplexity on calibration_mix_heldout (shipped: the embedded corpus's held-out slice, which "
                         "calibration never reads), wikitext2, c4 (from the shared data folder) or a PATH "
                         "(default: calibration_mix_heldout unless --tasks)")
    ev.add_argument("--tasks", default=None,
                    help="zero-shot tasks, comma-separated: hellaswag, piqa, arc_easy, arc_challenge, winogrande, "
                         "boolq (name=PATH for another file)")
    ev.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    ev.add_argument("--seq-len", type=int, default=512)
    ev.add_argument("--max-tokens", type=int, default=None, help="use at most this many tokens (whole windows)")
    ev.add_argument("--batch-size", type=int, default=4)
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ev.add_argument("--dtype", default="auto")
    add_trust_option(ev)
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ev.add_argument("--resident", default="dense", choices=RESIDENT_MODES,
                    help="how an artifact's weights stay in memory (see evo run); same results in every mode")
    ev.add_argument("--max-resident-mb", type=float, default=None,
                    help="MB cap: the decoded weights cached, bit-packed codes (compressed); all the weights "
                         "held (auto)")


def run(args: argparse.Namespace) -> int:
    import json

    from evo.data.corpus import EMBEDDED_HELDOUT, HELDOUT_DESCRIPTION, read_text

    tasks = _load_tasks(args) if args.tasks else []  # bad task names and files fail before the model loads
    dataset = args.dataset or (None if tasks else EMBEDDED_HELDOUT)
    text = read_text(dataset) if dataset else None
    model, tokenizer = load_for_eval(args.model, device=args.device, dtype=args.dtype, resident=args.resident,
                                     max_resident_mb=args.max_resident_mb, trust_remote_code=args.trust_remote_code)
    record: dict = {"model": args.model}
    if text is not None:
        record.update({"dataset": dataset, **_perplexity(model, tokenizer, text, args).to_dict()})
        if dataset == EMBEDDED_HELDOUT:
            record["dataset_note"] = HELDOUT_DESCRIPTION
    if tasks:
        record["tasks"] = {name: result.to_dict() for name, result in _zero_shot(model, tokenizer, tasks, args)}
    if args.json:
        print(json.dumps(record))
        return 0
    if text is not None:
        table = Table(title=f"perplexity on {dataset}" + (f" ({HELDOUT_DESCRIPTION})" if dataset == EMBEDDED_HELDOUT else ""))
        for key in ("model", "ppl", "mean_nll", "tokens_predicted", "windows", "seq_len"):
            table.add_column(key)
        table.add_row(args.model, f"{record['ppl']:.3f}", f"{record['mean_nll']:.4f}", str(record["tokens_predicted"]),
                      str(record["windows"]), str(record["seq_len"]))
        out.print(table)
    if tasks:
        table = Table(title=f"zero-shot accuracy of {args.model}" + (f" (first {args.limit} items)" if args.limit else ""))
        for key in ("task", "n", "acc", "acc_norm"):
            table.add_column(key, justify="right")
        for name, result in record["tasks"].items():
            norm = f"{result['acc_norm']:.4f} ± {result['acc_norm_stderr']:.4f}" if result["acc_norm"] is not None else "-"
            table.add_row(name, str(result["n"]), f"{result['acc']:.4f} ± {result['acc_stderr']:.4f}", norm)
        out.print(table)
    return 0


def _load_tasks(args: argparse.Namespace):
    from evo.data.tasks import TASKS, load_task, parse_tasks

    if args.limit is not None and args.limit < 1:
        raise EvoError("--limit must be at least 1")
    return [(name, TASKS[name].metrics, load_task(name, path, args.limit)) for name, path in parse_tasks(args.tasks)]


def _perplexity(model, tokenizer, text: str, args: argparse.Namespace):
    from evo.evaluate.perplexity import perplexity, tokenize_for_eval

    token_ids = tokenize_for_eval(tokenizer, text)
    with progress_bar() as progress:
        task = progress.add_task("perplexity", total=None)
        return perplexity(model, token_ids, seq_len=args.seq_len, max_tokens=args.max_tokens,
                          batch_size=args.batch_size,
                          progress=lambda done, total: progress.update(task, completed=done, total=total))


def _zero_shot(model, tokenizer, tasks, args: argparse.Namespace):
    from evo.evaluate.zeroshot import score_task

    with progress_bar() as progress:
        for name, metrics, examples in tasks:
            bar = progress.add_task(name, total=None)
            yield name, score_task(name, model, tokenizer, examples, metrics=metrics, batch_size=4 * args.batch_size,
                                   progress=lambda done, total, bar=bar: progress.update(bar, completed=done, total=total))


def is_artifact(path: str) -> bool:
    import os

    from evo.constants import MANIFEST_FILE

    # lexists: a manifest that is a link or a device is a (refused) artifact, not a model dir.
    return os.path.lexists(os.path.join(path, MANIFEST_FILE))


def load_for_eval(spec: str, *, device: str, dtype: str, resident: str = "dense", max_resident_mb=None,
                  trust_remote_code: bool = False):
    """(model, tokenizer) of an artifact directory or of any model evo.modelio loads."""
    if is_artifact(spec):
        from evo.compress.artifact import load

        with step(f"loading artifact {spec}"):
            return load(spec, device=device, dtype=None if dtype == "auto" else dtype, resident=resident,
                        max_resident_mb=max_resident_mb)
    if resident != "dense":
        raise EvoError(f"--resident {resident} needs an evo artifact; {spec} is a model: drop the option")
    loaded = load_model_with_progress(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    return loaded.model, loaded.tokenizer
