"""The layout's promises, checked on the source: one home per constant, no private names taken
across modules, engines that import no sibling engine, no test oracle or dead helper shipped."""

import ast
import subprocess
import sys
from pathlib import Path

EVO = Path(__file__).resolve().parent.parent / "evo"
SOURCES = sorted(EVO.rglob("*.py"))
FILE_NAMES = {"manifest.json", "tensors.bin", "spec.json", "run.json", "journal.jsonl", "checkpoint.json",
              "front.json", "best.toml", "calibration.json", "reference.safetensors",
              "activation_stats.safetensors", "size_cache", "optuna_journal.log", "uniform.json"}


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def test_file_names_and_units_are_spelt_only_in_constants():
    for path in SOURCES:
        if path.name == "constants.py":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Constant) and node.value in FILE_NAMES:
                raise AssertionError(f"{path}:{node.lineno} spells {node.value!r}: use evo.constants")
            if isinstance(node, ast.Constant) and node.value == 1_000_000 and type(node.value) is int:
                raise AssertionError(f"{path}:{node.lineno} spells MB: use evo.constants.MB")


def test_no_module_imports_a_private_name_of_another():
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("evo"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path}:{node.lineno} imports {private} from {node.module}"


def test_the_engine_base_imports_no_engine():
    code = ("import sys, evo.search.engines.base as b; "
            "print(sorted(m for m in sys.modules if m.startswith('evo.search.engines.') and m != b.__name__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=EVO.parent).stdout.strip()
    assert out == "[]"


def test_test_oracles_and_dead_helpers_are_not_shipped():
    import evo.evaluate.perplexity as perplexity
    import evo.modelio as modelio
    import evo.search.space as space

    assert not hasattr(perplexity, "kl_to_reference") and not hasattr(perplexity, "next_token_logprobs")
    assert not hasattr(modelio, "get_module") and not hasattr(space, "count_drops")
