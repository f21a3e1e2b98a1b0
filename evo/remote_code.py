"""No code from a model or an artifact runs unless the user opts in: a config.json or
tokenizer_config.json with an `auto_map` (a model's own Python) is refused in one line.

transformers, given trust_remote_code=None, asks `[y/N]` on stdin (so `yes | evo ...` would run
the directory's Python); evo always passes a bool and checks `auto_map` before loading anything.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from evo.constants import MODEL_CONFIG_FILE, TOKENIZER_CONFIG_FILE
from evo.errors import EvoError

# The files whose `auto_map` makes transformers import a model directory's Python.
REMOTE_CODE_FILES = (MODEL_CONFIG_FILE, TOKENIZER_CONFIG_FILE)

# Large enough for any real config or tokenizer config (tens of kB, a few MB with many added
# tokens), small enough that a link to /dev/zero or a huge file is refused, not read forever.
MAX_CONFIG_BYTES = 64 * 2**20


def read_json_bounded(path: Path, what: str) -> Any:
    """The JSON in `path`, reading at most MAX_CONFIG_BYTES; None when the file does not exist."""
    try:
        # Non-blocking: opening a named pipe must not wait for a writer. Links are fine (the HF
        # cache links snapshots to blobs); what they point to must be a regular file.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EvoError(f"{what}: cannot read {path.name} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise EvoError(f"{what}: {path.name} is not a regular file (a device, pipe or directory); replace it")
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise EvoError(f"{what}: {path.name} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; it is not a model config")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # bad JSON, non-UTF-8, 5000-digit ints, deep nesting
        raise EvoError(f"{what}: {path.name} is not valid JSON; fix or replace the file") from None


def asks_for_code(config: Any) -> bool:
    """True when a config dict names classes to import from the model's own Python files."""
    return isinstance(config, dict) and bool(config.get("auto_map"))


def refuse_remote_code(what: str, configs: dict[str, Any], *, trust_remote_code: bool, hint: str) -> None:
    """Raise one EvoError line when a config asks for code and the user did not opt in."""
    if trust_remote_code:
        return
    for filename, config in configs.items():
        if asks_for_code(config):
            raise EvoError(f"{what} ships its own Python code ({filename} has an auto_map) and evo does not run it: {hint}")


def check_local_dir(
    directory: str | os.PathLike[str],
    what: str,
    *,
    trust_remote_code: bool,
    hint: str,
    filenames: tuple[str, ...] = REMOTE_CODE_FILES,
) -> None:
    """refuse_remote_code over the config files present in a local directory."""
    directory = Path(directory)
    configs = {name: read_json_bounded(directory / name, what) for name in filenames}
    refuse_remote_code(what, configs, trust_remote_code=trust_remote_code, hint=hint)


def check_hub_model(model_id: str, *, trust_remote_code: bool, hint: str) -> None:
    """refuse_remote_code over a hub model's config files, fetched as JSON only (no code).

    A model that cannot be fetched is left to the loader, which says so in its own words.
    """
    if trust_remote_code:
        return
    from transformers import PretrainedConfig
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    configs: dict[str, Any] = {}
    try:
        configs[MODEL_CONFIG_FILE], _ = PretrainedConfig.get_config_dict(model_id)
        configs[TOKENIZER_CONFIG_FILE] = get_tokenizer_config(model_id)
    except (OSError, ValueError):
        pass
    refuse_remote_code(f"model {model_id!r}", configs, trust_remote_code=False, hint=hint)


def is_remote_code_error(exc: BaseException) -> bool:
    """transformers' own refusal (three lines inviting trust_remote_code=True)."""
    return "trust_remote_code" in str(exc)
