"""benchmarks/issue19_h200.sh: its syntax, and a PHASE it does not know is refused before anything runs.
(Its phases themselves are smoke-tested by hand with SMOKE=1: minutes, not a unit test.)"""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "issue19_h200.sh"


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_unknown_phase_refused_before_running(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "SMOKE": "1",
           "PHASE": "ccds,bogus", "PY": "false"}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=SCRIPT.parent.parent, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "unknown phase 'bogus'" in done.stdout
    assert not (tmp_path / "out" / "ccds.log").exists()  # ccds did not start


def test_phase_needs_out(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PHASE")}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=SCRIPT.parent.parent, env={**env, "PHASE": "ccds"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "OUT" in done.stderr
