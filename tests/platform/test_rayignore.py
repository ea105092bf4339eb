"""What ``ray job submit --working-dir .`` uploads from this repository (.rayignore + .gitignore), packaged by
Ray's own code: the job's code and configs, not the tests' weights, the docs, local state or the venv."""

from __future__ import annotations

import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_job_upload_holds_the_code_and_nothing_else(tmp_path: Path) -> None:
    from ray._private.runtime_env.packaging import PACKAGE_SIZE_WARNING, create_package

    package = tmp_path / "working_dir.zip"
    # What the job submission client does for --working-dir (include_gitignore: Ray's default, unless
    # RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1).
    create_package(str(REPO), package, include_gitignore=True)
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
    for needed in ("jobs/train_var.py", "jobs/restore_batch.py", "hsivar/restore.py",
                   "platform/hsivar_platform/locations.py", "configs/tiny.yaml", "pyproject.toml"):
        assert needed in names, needed
    tops = {n.split("/", 1)[0] for n in names}
    assert not tops & {"tests", "bench", "docs", "deploy", "scripts", "work", ".venv", ".git", "mlruns"}, tops
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    size = package.stat().st_size
    assert size < PACKAGE_SIZE_WARNING / 20, f"{size} bytes: {sorted(names)}"  # well under Ray's warning size
