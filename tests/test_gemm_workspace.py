from evo.evaluate.gemm_workspace import SETTINGS, gemms_without_workspace


def test_a_process_without_either_variable_gets_both():
    environ = {"PATH": "/bin"}
    line = gemms_without_workspace(environ)
    assert environ == {"PATH": "/bin", **SETTINGS} and "without a workspace" in line
    # cuBLASLt keeps a workspace of its own: a shared one of 0 bytes stops every cuBLASLt matmul
    assert environ["CUBLAS_WORKSPACE_CONFIG"] == ":0:0" and environ["TORCH_CUBLASLT_UNIFIED_WORKSPACE"] == "0"


def test_a_variable_the_user_set_keeps_both_of_theirs():
    for key in SETTINGS:
        environ = {key: "mine"}
        line = gemms_without_workspace(environ)
        assert environ == {key: "mine"} and f"{key}=mine" in line


def test_the_search_command_asks_for_it_before_anything_else_only_when_told(monkeypatch):
    import argparse
    import os

    import pytest

    from evo.cli import search
    from evo.errors import EvoError

    for key in SETTINGS:  # set then removed: the test's end restores the process as it was
        monkeypatch.setenv(key, "placeholder")
        monkeypatch.delenv(key)
    with pytest.raises(EvoError, match="budget"):  # the default: torch's workspace, nothing set
        search.run(argparse.Namespace(budget_mb=-1.0, resume=None, run_dir=None, cublas_workspace="torch"))
    assert not any(key in os.environ for key in SETTINGS)
    with pytest.raises(EvoError, match="budget"):  # stops at once, after setting both
        search.run(argparse.Namespace(budget_mb=-1.0, resume=None, run_dir=None, cublas_workspace="none"))
    assert all(os.environ.get(key) == value for key, value in SETTINGS.items())
