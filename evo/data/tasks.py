"""Zero-shot multiple-choice tasks read from local files, formatted as lm-eval-harness formats them.

Each task is a loader registered by name that turns its file(s) into `Example`s: for every choice a
(context, continuation) pair whose continuation log-likelihood is scored (evo.evaluate.zeroshot). The files
are the ones in the shared data folder (see each folder's SOURCE.md), found under $EVO_DATA_DIR,
./shared/data or ../shared/data, or given as `name=PATH`.

Formats (lm-eval-harness prompts, on the files available here):
  hellaswag      llama.cpp text format, 6 lines per item: "activity: ctx", gold, 4 endings;
                 context = preprocess(line 1), choices " " + preprocess(ending)
  piqa           valid.jsonl (goal, sol1, sol2) + valid-labels.lst; "Question: {goal}\\nAnswer:"
  arc_easy,      llm-foundry jsonl (query "Question: ...", choices, gold); query + "\\nAnswer:",
  arc_challenge  choices " " + text
  winogrande     llm-foundry jsonl (context_options, continuation, gold); partial scoring: each
                 option's prefix is a context, " " + continuation the scored text
  boolq          llm-foundry jsonl (query "Passage: ...\\nQuestion: ...?", gold 0=no 1=yes);
                 query + "\\nAnswer:", choices " no" / " yes"
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evo.data.corpus import shared_data_dirs
from evo.errors import EvoError
from evo.types import Example


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's file is in the shared data folder, how to read it, what it reports."""

    name: str
    relative_path: str
    load: Callable[[Path], list[Example]]
    metrics: tuple[str, ...] = ("acc", "acc_norm")


class FormatError(EvoError):
    pass


def _fail(path: Path, line: int, message: str) -> FormatError:
    return FormatError(f"task file {path} line {line}: {message}")


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(path, number, f"not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise _fail(path, number, "expected a JSON object")
        records.append((number, record))
    if not records:
        raise FormatError(f"task file {path} is empty")
    return records


def _field(record: dict, key: str, kind: type, path: Path, line: int):
    if key not in record:
        raise _fail(path, line, f"missing {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise _fail(path, line, f"{key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def _single_context(context: str, choices: list[str], label: int, path: Path, line: int) -> Example:
    try:
        return Example(tuple(context for _ in choices), tuple(choices), label)
    except ValueError as exc:
        raise _fail(path, line, str(exc)) from None


def _query_records(path: Path, *, strip_prefix: str = "", fixed_choices: tuple[str, ...] | None = None) -> list[Example]:
    """llm-foundry's {"query", "choices", "gold"} records, prompted as lm-eval prompts them:
    the query (less `strip_prefix`) + "\nAnswer:", each choice after a space."""
    examples = []
    for line, record in _jsonl(path):
        query = _field(record, "query", str, path, line)
        choices = list(fixed_choices) if fixed_choices else _field(record, "choices", list, path, line)
        gold = _field(record, "gold", int, path, line)
        if strip_prefix and query.startswith(strip_prefix):
            query = query[len(strip_prefix):]
        examples.append(_single_context(f"{query}\nAnswer:", [f" {c}" for c in choices], gold, path, line))
    return examples


def _query_choices(path: Path) -> list[Example]:
    """ARC: "Question: {question}\nAnswer:" and the answer texts."""
    return _query_records(path)


def _boolq(path: Path) -> list[Example]:
    """BoolQ: "{passage}\nQuestion: {question}?\nAnswer:" and " no" / " yes"."""
    return _query_records(path, strip_prefix="Passage: ", fixed_choices=("no", "yes"))


def _winogrande(path: Path) -> list[Example]:
    examples = []
    for line, record in _jsonl(path):
        options = _field(record, "context_options", list, path, line)
        continuation = _field(record, "continuation", str, path, line)
        gold = _field(record, "gold", int, path, line)
        try:
            examples.append(Example(tuple(options), tuple(f" {continuation.strip()}" for _ in options), gold))
        except ValueError as exc:
            raise _fail(path, line, str(exc)) from None
    return examples


def _piqa(path: Path) -> list[Example]:
    labels_path = path.with_name("valid-labels.lst")
    if not labels_path.is_file():
        raise FormatError(f"piqa needs its labels beside {path}: {labels_path} is missing")
    labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
    records = _jsonl(path)
    if len(labels) != len(records):
        raise FormatError(f"piqa: {path} has {len(records)} records but {labels_path} has {len(labels)} labels")
    examples = []
    for (line, record), label in zip(records, labels):
        goal = _field(record, "goal", str, path, line)
        choices = [f" {_field(record, key, str, path, line)}" for key in ("sol1", "sol2")]
        if label not in ("0", "1"):
            raise _fail(labels_path, line, f"label {label!r} is not 0 or 1")
        examples.append(_single_context(f"Question: {goal}\nAnswer:", choices, int(label), path, line))
    return examples


def hellaswag_preprocess(text: str) -> str:
    """lm-eval-harness's HellaSwag cleaning of WikiHow artefacts."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(path: Path) -> list[Example]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or len(lines) % 6:
        raise FormatError(f"hellaswag file {path}: {len(lines)} lines is not a multiple of 6 "
                          "(context, gold, 4 endings per item)")
    examples = []
    for start in range(0, len(lines), 6):
        context, gold, *endings = lines[start:start + 6]
        if gold.strip() not in ("0", "1", "2", "3"):
            raise _fail(path, start + 2, f"gold label {gold!r} is not 0-3")
        examples.append(_single_context(hellaswag_preprocess(context), [" " + hellaswag_preprocess(e) for e in endings],
                                        int(gold), path, start + 1))
    return examples


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    TASKS[spec.name] = spec


for _spec in (
    TaskSpec("hellaswag", "hellaswag/hellaswag_val_full.txt", _hellaswag),
    TaskSpec("piqa", "piqa/valid.jsonl", _piqa),
    TaskSpec("arc_easy", "arc_easy/arc_easy.jsonl", _query_choices),
    TaskSpec("arc_challenge", "arc_challenge/arc_challenge.jsonl", _query_choices),
    TaskSpec("winogrande", "winogrande/winogrande.jsonl", _winogrande, metrics=("acc",)),
    TaskSpec("boolq", "boolq/boolq.jsonl", _boolq, metrics=("acc",)),
):
    register_task(_spec)


def parse_tasks(text: str) -> list[tuple[str, Path | None]]:
    """`--tasks a,b=PATH,c` → [(name, explicit path or None)], names checked."""
    chosen = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, path = item.partition("=")
        if name not in TASKS:
            raise EvoError(f"unknown task {name!r}: use one of {', '.join(TASKS)} (optionally name=PATH)")
        chosen.append((name, Path(path) if path else None))
    if not chosen:
        raise EvoError("--tasks is empty: name at least one task")
    return chosen


def find_task_file(name: str, path: Path | None = None) -> Path:
    spec = TASKS[name]
    if path is not None:
        if not path.is_file():
            raise EvoError(f"task file {path} for {name} does not exist")
        return path
    for directory in shared_data_dirs():
        candidate = directory / spec.relative_path
        if candidate.is_file():
            return candidate
    raise EvoError(f"task {name}: {spec.relative_path} not found under $EVO_DATA_DIR, ./shared/data or "
                   f"../shared/data; pass the file as --tasks {name}=PATH")


def load_task(name: str, path: Path | None = None, limit: int | None = None) -> list[Example]:
    """The task's examples (the first `limit` of them: the same items for every model)."""
    examples = TASKS[name].load(find_task_file(name, path))
    return examples[:limit] if limit is not None else examples
