"""Zero-shot tasks: the loaders build lm-eval-harness's prompts from each local format, scoring sums
the continuation's log-probabilities exactly as an unbatched forward pass does, and `evo eval
--tasks` reports acc / acc_norm or fails on one line naming the file and line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from evo.cli import main
from evo.data.corpus import shared_data_dirs
from evo.errors import EvoError
from evo.data.tasks import TASKS, hellaswag_preprocess, load_task, parse_tasks
from evo.types import Example
from evo.evaluate.zeroshot import encode_pair, loglikelihoods, score_task

torch.set_num_threads(1)


def write_files(tmp_path):
    """One tiny file per task, in the shared data folder's formats."""
    files = {}
    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"query": "Question: Which is a gas?", "choices": ["steam", "ice", "stone"], "gold": 0})
                   + "\n" + json.dumps({"query": "Question: Two plus two?", "choices": ["four", "five"], "gold": 0}) + "\n")
    files["arc_easy"] = files["arc_challenge"] = arc
    (tmp_path / "piqa").mkdir()
    piqa = tmp_path / "piqa" / "valid.jsonl"
    piqa.write_text(json.dumps({"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid"}) + "\n")
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n")
    files["piqa"] = piqa
    wino = tmp_path / "wino.jsonl"
    wino.write_text(json.dumps({"context_options": ["Ann helped Bo so Ann", "Ann helped Bo so Bo"],
                                "continuation": "was thanked.", "gold": 1}) + "\n")
    files["winogrande"] = wino
    boolq = tmp_path / "boolq.jsonl"
    boolq.write_text(json.dumps({"query": "Passage: Water is wet.\nQuestion: is water wet?", "choices": ["no", "yes"],
                                 "gold": 1}) + "\n")
    files["boolq"] = boolq
    hellaswag = tmp_path / "hellaswag.txt"
    hellaswag.write_text("Roof shingle removal: A man is sitting on a roof. he\n3\nis using wrap.\n"
                         "is ripping [title] tiles off.\nis holding a cube.\nstarts pulling up roofing.\n")
    files["hellaswag"] = hellaswag
    return files


def test_loaders_build_lm_eval_prompts(tmp_path):
    files = write_files(tmp_path)
    arc = load_task("arc_easy", files["arc_easy"])
    assert arc[0] == Example(("Question: Which is a gas?\nAnswer:",) * 3, (" steam", " ice", " stone"), 0)
    assert len(arc) == 2
    piqa = load_task("piqa", files["piqa"])[0]
    assert piqa.contexts[0] == "Question: Open a jar\nAnswer:" and piqa.continuations == (" twist the lid", " eat the lid")
    wino = load_task("winogrande", files["winogrande"])[0]
    assert wino.contexts == ("Ann helped Bo so Ann", "Ann helped Bo so Bo")
    assert wino.continuations == (" was thanked.",) * 2 and wino.label == 1
    boolq = load_task("boolq", files["boolq"])[0]
    assert boolq.contexts[0] == "Water is wet.\nQuestion: is water wet?\nAnswer:" and boolq.continuations == (" no", " yes")
    hs = load_task("hellaswag", files["hellaswag"])[0]
    assert hs.contexts[0] == "Roof shingle removal: A man is sitting on a roof. he" and hs.label == 3
    assert hs.continuations[1] == " is ripping. tiles off."
    assert hellaswag_preprocess("a [header] b  c") == "a b c"
    assert load_task("arc_easy", files["arc_easy"], limit=1) == arc[:1]


@pytest.mark.parametrize("content, message", [
    ('{"query": "Question: x", "choices": ["a"], "gold": 0}\n{"query": "Question: y", "choices": ["a"]}\n',
     "line 2: missing 'gold'"),
    ('{"query": "Question: x", "choices": ["a"], "gold": 3}\n', "line 1: label 3 is not one of the 1 choices"),
    ("not json\n", "line 1: not JSON"),
])
def test_bad_task_file_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "arc.jsonl"
    path.write_text(content)
    with pytest.raises(EvoError, match=message) as error:
        load_task("arc_easy", path)
    assert str(path) in str(error.value)


def test_unknown_task_lists_the_tasks():
    with pytest.raises(EvoError, match="unknown task 'mmlu'.*hellaswag"):
        parse_tasks("arc_easy,mmlu")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from evo.modelio import load_model

    loaded = load_model(str(tiny_model_dir("llama")))
    return loaded.model, loaded.tokenizer


def unbatched(model, tokenizer, context, continuation):
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits.float()[0], dim=-1)
    return sum(float(logprobs[len(context_ids) + i - 1, t]) for i, t in enumerate(continuation_ids))


def test_batched_scores_equal_one_pair_at_a_time(tiny):
    model, tokenizer = tiny
    pairs = [("The cat sat on", " the mat"), ("A", " long continuation of several words"),
             ("Question: why?\nAnswer:", " because"), ("trailing space ", "moves"), ("x", " y")]
    batched = loglikelihoods(model, tokenizer, pairs, batch_size=3)
    for (context, continuation), score in zip(pairs, batched):
        assert score == pytest.approx(unbatched(model, tokenizer, context, continuation), abs=1e-4)
        assert score < 0


def test_acc_picks_the_likeliest_choice_and_acc_norm_divides_by_length(tiny):
    model, tokenizer = tiny
    choices = (" a", " bb bb bb bb", " ccc")
    scores = [unbatched(model, tokenizer, "Pick one:", c) for c in choices]
    best = max(range(3), key=lambda i: scores[i])
    best_norm = max(range(3), key=lambda i: scores[i] / len(choices[i]))
    examples = [Example(("Pick one:",) * 3, choices, label) for label in range(3)]
    result = score_task("toy", model, tokenizer, examples)
    assert result.n == 3
    assert result.acc == pytest.approx(1 / 3)  # exactly one label is the argmax
    assert result.acc_norm == pytest.approx(1 / 3)
    right = score_task("toy", model, tokenizer, [examples[best]])
    assert right.acc == 1.0 and math.isnan(right.acc_stderr)
    assert score_task("toy", model, tokenizer, [examples[best_norm]]).acc_norm == 1.0
    assert result.acc_stderr == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 2))


def test_eval_tasks_cli_json_and_errors(tiny_model_dir, tmp_path, capsys):
    files = write_files(tmp_path)
    model = str(tiny_model_dir("llama"))
    code = main(["eval", model, "--tasks", f"arc_easy={files['arc_easy']},winogrande={files['winogrande']}",
                 "--limit", "1", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record["tasks"]) == {"arc_easy", "winogrande"} and "ppl" not in record
    assert record["tasks"]["arc_easy"]["n"] == 1 and record["tasks"]["winogrande"]["acc_norm"] is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "Question: x", "choices": ["a", "b"]}\n')
    assert main(["eval", model, "--tasks", f"arc_easy={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err.replace("\n", "") and "line 1" in err
    assert main(["eval", model, "--tasks", "mmlu"]) == 2
    assert "unknown task" in capsys.readouterr().err


EXPECTED_COUNTS = {"hellaswag": 10042, "piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "winogrande": 1267,
                   "boolq": 3270}


@pytest.mark.parametrize("name", list(TASKS))
def test_shared_task_files_load(name):
    if not any((d / TASKS[name].relative_path).is_file() for d in shared_data_dirs()):
        pytest.skip(f"{TASKS[name].relative_path} is not in the shared data folder")
    examples = load_task(name)
    assert len(examples) == EXPECTED_COUNTS[name]
    labels = {e.label for e in examples}
    assert len(labels) >= 2 and all(0 <= e.label < len(e.contexts) for e in examples)
