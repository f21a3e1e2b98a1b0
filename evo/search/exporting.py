"""`evo export`'s library side: the best config of a run under a budget and its artifact, written
so that a rerun with the same result changes nothing and a refused export leaves nothing behind.

Everything is built in a hidden staging directory beside --out, its size compared with what the
run recorded, and only then moved into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from evo.constants import EXPORT_ARTIFACT_DIR, EXPORT_CONFIG_FILE, MANIFEST_FILE, MB
from evo.errors import EvoError
from evo.fileio import replace_directory
from evo.types import FrontPoint

STAGING_PREFIX = ".evo-exporting-"


@dataclass(frozen=True)
class ExportResult:
    config_path: Path
    artifact_path: Path
    point: FrontPoint  # the front point exported
    budget_bytes: int
    metric: str
    unchanged: bool  # an identical export was already there: nothing was written
    summary: object | None = None  # the ArtifactSummary when an artifact was written
    expected_bytes: int | None = None  # the artifact's size the run's size model predicts (point's, or decode-speed's)


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, budget_mb: float | None = None,
               device: str = "cpu", dtype: str = "auto", overwrite: bool = False, prefer_decode_speed: bool = False,
               trust_remote_code: bool = False, status=None) -> ExportResult:
    from evo.compress.config import CompressionConfig
    from evo.search.lifecycle import check_budget_mb, check_directory_path, normalize_run_dir
    from evo.search.loop import run_spec

    say = status or (lambda message: None)
    check_budget_mb(budget_mb)
    run_dir = normalize_run_dir(run_dir)
    out_dir = normalize_run_dir(out_dir)
    check_directory_path(out_dir, "--out")
    budget = int(round(budget_mb * MB)) if budget_mb is not None else None
    store, spec = run_spec(run_dir, dtype=dtype)  # fails before loading anything
    point, budget = store.choose(budget)
    if point.config.get("format") == "gguf":
        raise EvoError(f"run {run_dir} searched GGUF types: export it with --format gguf --out FILE.gguf")
    config = CompressionConfig.from_dict(point.config)
    config_text = config.to_toml()
    config_path, artifact_path = out_dir / EXPORT_CONFIG_FILE, out_dir / EXPORT_ARTIFACT_DIR
    result = dict(config_path=config_path, artifact_path=artifact_path, point=point, budget_bytes=budget,
                  metric=spec.fitness)
    # A decode-speed export's size is known only once the model is loaded: it is always rewritten.
    if not prefer_decode_speed and _same_export(config_path, artifact_path, config_text, point):
        return ExportResult(**result, unchanged=True, expected_bytes=point.size_bytes)
    if not overwrite:
        for path in (config_path, artifact_path):
            if path.exists():
                raise EvoError(f"{path} already exists and differs from this export: pass --overwrite to "
                               f"replace it, or choose another --out")
    if artifact_path.exists() and not (artifact_path / MANIFEST_FILE).is_file() and any(artifact_path.iterdir()):
        raise EvoError(f"{artifact_path} is a non-empty directory that is not an evo artifact: refusing to replace it")

    from evo.compress.model import compress_and_write
    from evo.search.loop import open_session

    session = open_session(spec, run_dir, resume=True, device=device, trust_remote_code=trust_remote_code,
                           status=say)
    expected = point.size_bytes
    hessians = session.hessians
    if hessians is not None and getattr(hessians, "levels_device", None) not in (None, session.evaluator.device.type):
        from evo.compress.plan import config_needs_hessians

        if config_needs_hessians(config, session.loaded.info):
            raise EvoError(f"run {run_dir} computed its gptq levels on {hessians.levels_device}; their codes are "
                           f"exact for that device only: export with --device {hessians.levels_device}")
    if prefer_decode_speed:
        from evo.runtime.sizes import decode_speed_size

        expected = decode_speed_size(session.size_model, config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f"{STAGING_PREFIX}{out_dir.name}-"))
    try:
        (staging / EXPORT_CONFIG_FILE).write_text(config_text)
        say(f"compressing and writing the artifact ({session.spec.dtype})")
        summary = compress_and_write(session.loaded, config, staging / EXPORT_ARTIFACT_DIR,
                                     stats=session.activation_stats, hessians=hessians,
                                     size_cache=session.size_model.size_cache,
                                     prefer_decode_speed=prefer_decode_speed)
        if summary.total_bytes != expected:
            raise EvoError(
                f"the artifact would have {summary.total_bytes} bytes but the run's sizes say {expected}: "
                "the run's sizes were measured for other bytes (another evo version, model or tokenizer files); "
                "nothing was written: search again with this evo"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        replace_directory(staging / EXPORT_ARTIFACT_DIR, artifact_path, trash_prefix=f"{STAGING_PREFIX}old-")
        os.replace(staging / EXPORT_CONFIG_FILE, config_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(**result, unchanged=False, summary=replace(summary, path=artifact_path),
                        expected_bytes=expected)


def _same_export(config_path: Path, artifact_path: Path, config_text: str, point: FrontPoint) -> bool:
    """Whether --out already holds exactly this export: the same config file, and an artifact whose
    manifest records this config and size and whose files have the sizes it lists."""
    from evo.compress.artifact import read_manifest

    if not config_path.is_file() or not (artifact_path / MANIFEST_FILE).is_file():
        return False
    if config_path.read_text() != config_text:
        return False
    try:
        manifest = read_manifest(artifact_path)
    except EvoError:
        return False
    if manifest.config.to_dict() != point.config or manifest.total_bytes != point.size_bytes:
        return False
    on_disk = {p.relative_to(artifact_path).as_posix(): p.stat().st_size
               for p in artifact_path.rglob("*") if p.is_file() and p.name != MANIFEST_FILE}
    return on_disk == manifest.files
