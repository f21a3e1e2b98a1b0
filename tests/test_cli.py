"""The CLI end to end on a tiny local model: output file, table, and one-line errors."""

import json
import subprocess
import sys

import pytest

from evo.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "evo.cli", *args], capture_output=True, text=True, timeout=300)


def test_calibrate_writes_the_set_and_prints_the_table(tiny_model_dir, text_corpus, tmp_path, capsys):
    out = tmp_path / "cal.json"
    code = main(["calibrate", "--model", str(tiny_model_dir("llama")), "--corpus", str(text_corpus),
                 "--samples", "6", "--clusters", "3", "--heldout", "3", "--seq-len", "32", "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert len(data["calibration"]["sources"]) == 6 and len(data["calibration"]["clusters"]) == 6
    printed = capsys.readouterr().out
    assert "CCDS clusters" in printed and "ARI" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--corpus", "/nonexistent/corpus.txt"], "does not exist"),
        (["--samples", "2", "--clusters", "3"], "smaller than --clusters"),
        (["--clusters", "500", "--samples", "600", "--heldout", "0"], "larger than the"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tiny_model_dir, text_corpus, tmp_path, extra, message):
    args = ["calibrate", "--model", str(tiny_model_dir("llama")), "--corpus", str(text_corpus),
            "--samples", "6", "--clusters", "3", "--heldout", "3", "--seq-len", "32", "--out", str(tmp_path / "c.json")]
    # later options override earlier ones in argparse
    result = run_cli(*args, *extra)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "c.json").exists()


def test_empty_corpus_is_refused(tiny_model_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = run_cli("calibrate", "--model", str(tiny_model_dir("llama")), "--corpus", str(tmp_path / "empty.txt"),
                     "--out", str(tmp_path / "c.json"))
    assert result.returncode == 2 and "corpus is empty" in result.stderr


def test_analyze_writes_csv_png_and_table(tiny_model_dir, tmp_path, capsys):
    import csv

    code = main(["analyze", "--model", str(tiny_model_dir("llama")), "--out", str(tmp_path), "--bits", "3", "8",
                 "--rescales", "1", "--sparsities", "0", "--layers", "2"])
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "analysis.csv").open()))
    assert len(rows) == 2 * 7  # two settings × seven Llama roles
    assert (tmp_path / "analysis.png").stat().st_size > 1000
    assert "compressibility" in capsys.readouterr().out


def test_eval_unknown_dataset_is_one_line(tiny_model_dir):
    result = run_cli("eval", str(tiny_model_dir("llama")), "--dataset", "no-such-dataset")
    assert result.returncode == 2 and "no-such-dataset" in result.stderr


def test_compress_then_eval_an_artifact(tiny_model_dir, tmp_path):
    config = tmp_path / "u4.toml"
    config.write_text("[default]\nbits = 4\ngroup_size = 32\n[embedding]\nbits = 8\ngroup_size = 32\n")
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 50)
    assert main(["compress", "--model", str(tiny_model_dir("llama")), "--config", str(config),
                 "--out", str(tmp_path / "art")]) == 0
    result = run_cli("eval", str(tmp_path / "art"), "--dataset", str(tmp_path / "text.txt"), "--seq-len", "64",
                     "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["windows"] > 0 and record["ppl"] > 1


def test_compress_with_a_config_naming_a_missing_tensor(tiny_model_dir, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[tensors."model.layers.99.mlp.up_proj.weight"]\nbits = 4\n')
    result = run_cli("compress", "--model", str(tiny_model_dir("llama")), "--config", str(config),
                     "--out", str(tmp_path / "art"))
    assert result.returncode == 2 and "lacks" in result.stderr


def test_inspect_lists_tensors_roles_shapes_and_allowed_settings(tiny_model_dir, capsys):
    assert main(["inspect", "--model", str(tiny_model_dir("llama")), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    tensors = {t["name"]: t for t in listed["tensors"]}
    q = tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q["role"] == "attn_q" and q["shape"] == [64, 64] and q["section"].startswith("layers.0.attention")
    assert "bits 2/3/4/5/6/8/16" in q["allowed"]
    assert tensors["model.layers.0.input_layernorm.weight"]["allowed"] == "bits = 16 only (1-D)"
    assert tensors["model.embed_tokens.weight"]["section"] == "embedding" and listed["layers"] == 4
    assert main(["inspect", "--model", str(tiny_model_dir("llama"))]) == 0
    assert "mlp_down" in capsys.readouterr().out


def test_the_config_error_names_a_command_that_exists(tiny_model_dir, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[tensors."model.layers.99.mlp.up_proj.weight"]\nbits = 4\n')
    result = run_cli("compress", "--model", str(tiny_model_dir("llama")), "--config", str(config),
                     "--out", str(tmp_path / "art"))
    assert "`evo inspect`" in result.stderr
    assert run_cli("inspect", "--help").returncode == 0


def test_compress_twice_with_one_hessians_dir_reuses_statistics_and_hessians(tiny_model_dir, tmp_path, monkeypatch):
    import evo.evaluate.hessian as hessian
    import evo.evaluate.stats as stats

    calls = {"stats": 0, "hessians": 0}

    def counting(key, function):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(stats, "collect_activation_stats", counting("stats", stats.collect_activation_stats))
    monkeypatch.setattr(hessian, "collect_hessians", counting("hessians", hessian.collect_hessians))
    config = tmp_path / "gptq.toml"  # gptq decoder linears; the embedding's mse reads the head input's E[x²]
    config.write_text('[default]\nbits = 4\ngroup_size = 32\nquantizer = "gptq"\n'
                      '[embedding]\nbits = 8\ngroup_size = 32\nquantizer = "mse"\n')
    model = str(tiny_model_dir("llama"))
    for name in ("first", "second"):
        assert main(["compress", "--model", model, "--config", str(config), "--out", str(tmp_path / name),
                     "--hessians", str(tmp_path / "hessians")]) == 0
        assert calls == {"stats": 1, "hessians": 1}, name
    first = {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir()}
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "second").iterdir()}
    # another model (or other tokens) names other statistics: the kept file is not theirs
    kept = tmp_path / "hessians" / "activation_stats.safetensors"
    tokens = [[5, 6, 7, 8]]
    assert stats.cached_stats(kept, stats.stats_digest(model, tokens)) is None
    assert stats.cached_stats(tmp_path / "nothing.safetensors", "x") is None
    assert main(["compress", "--model", str(tiny_model_dir("qwen2")), "--config", str(config),
                 "--out", str(tmp_path / "third"), "--hessians", str(tmp_path / "hessians")]) == 0
    assert calls == {"stats": 2, "hessians": 2}
