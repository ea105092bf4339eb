"""Where local outputs go (hsivar_platform.locations): the HSIVAR_WORK_DIR default, and the refusal of outputs
that would land in a Ray job's temporary working-directory copy, here a folder laid out as Ray lays it out."""

from __future__ import annotations

from pathlib import Path

import pytest
from hsivar_platform.locations import (
    WORK_DIR_ENV,
    check_outlives_job,
    default_work_dir,
    inside_job_copy,
    job_working_copy,
    local_path,
)
from hsivar_platform.pipeline_config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def job_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory is a job's working-directory copy (Ray 2.60's layout), with no tracking server or
    work dir in the environment."""
    session = tmp_path / "ray" / "session_2026-12-01_10-00-00_1_2"
    copy = session / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv(WORK_DIR_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return copy


def test_job_working_copy_is_found_from_its_root_and_below(job_copy: Path, tmp_path: Path) -> None:
    assert job_working_copy() == job_copy
    (job_copy / "jobs").mkdir()
    assert job_working_copy(job_copy / "jobs") == job_copy
    assert job_working_copy(tmp_path) is None
    assert job_working_copy(job_copy.parent) is None  # working_dir_files itself is no copy


def test_default_work_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(WORK_DIR_ENV, raising=False)
    assert default_work_dir() == "work"
    monkeypatch.setenv(WORK_DIR_ENV, "")
    assert default_work_dir() == "work"
    monkeypatch.setenv(WORK_DIR_ENV, str(tmp_path))
    assert default_work_dir() == str(tmp_path)


def test_local_path_of_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_path("s3://b/runs") is None and local_path("http://mlflow:5000") is None
    assert local_path("sqlite:///work/mlflow.db") == tmp_path / "work" / "mlflow.db"
    assert local_path("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert local_path("file:///abs/runs") == Path("/abs/runs")
    assert local_path("work/runs") == tmp_path / "work" / "runs"


def test_relative_work_dir_in_a_job_copy_is_a_config_error_naming_what_to_set(job_copy: Path) -> None:
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    assert cfg.run.work_dir == "work"
    with pytest.raises(ConfigError) as err:
        cfg.resolved()
    msg = str(err.value)
    assert msg.startswith("run.work_dir: 'work' resolves to ")
    assert str(job_copy / "work") in msg and "Ray deletes that copy" in msg
    assert WORK_DIR_ENV in msg and "run.work_dir=/absolute/path" in msg and "run.storage_path=s3://" in msg
    # An explicit storage path in the copy is named as such.
    with pytest.raises(ConfigError, match=r"^run\.storage_path: 'runs'"):
        load_config(None, ["run.storage_path=runs"]).resolved()
    # A local tracking store in the copy too, even with the storage on S3.
    with pytest.raises(ConfigError, match=r"^tracking\.tracking_uri: 'sqlite:///m.db'"):
        load_config(None, ["run.storage_path=s3://b/runs", "run.work_dir=/tmp/w",
                           "tracking.tracking_uri=sqlite:///m.db"]).resolved()


def test_work_dir_from_the_environment_or_explicit_wins_in_a_job_copy(
        job_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "stack-work"
    monkeypatch.setenv(WORK_DIR_ENV, str(work))
    r = load_config(REPO / "configs" / "tiny.yaml").resolved()
    assert r.run.work_dir == str(work) and r.run.storage_path == str(work / "runs")
    assert r.checkpoint_root() == str(work / "runs" / "hsivar-tiny" / "train")
    assert r.tracking.tracking_uri == f"sqlite:///{work / 'mlflow.db'}"
    assert r.tracking.artifact_location == str(work / "mlartifacts")

    explicit = tmp_path / "explicit"
    r = load_config(REPO / "configs" / "tiny.yaml", [f"run.work_dir={explicit}"]).resolved()
    assert r.run.work_dir == str(explicit)
    assert r.published_uri("vqvae") == str(explicit / "runs" / "hsivar-tiny" / "vqvae" / "latest")

    # Remote storage and a tracking server: a relative work dir (logs, demo data) is allowed in the copy.
    monkeypatch.delenv(WORK_DIR_ENV)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5050")
    r = load_config(None, ["run.storage_path=s3://b/runs"]).resolved()
    assert r.run.work_dir == str(job_copy / "work") and r.storage_root == "s3://b/runs"


def test_outside_a_job_copy_relative_paths_resolve_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(WORK_DIR_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = load_config(REPO / "configs" / "tiny.yaml").resolved()
    assert r.run.work_dir == str(tmp_path / "work") and r.run.storage_path == str(tmp_path / "work" / "runs")
    check_outlives_job("--out", "eval", "tables")  # no error
    assert inside_job_copy("eval") is None


def test_check_outlives_job_for_cli_paths(job_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^--out: 'eval' resolves to .*/_ray_pkg_x/eval \(tables\).*use /abs$"):
        check_outlives_job("--out", "eval", "tables", fix="use /abs")
    check_outlives_job("--out", tmp_path / "eval", "tables")  # absolute, elsewhere
    check_outlives_job("--out", "s3://b/eval", "tables")
    with pytest.raises(ValueError, match="resolves to"):  # absolute but inside the copy
        check_outlives_job("--output", str(job_copy / "restored"), "outputs")


def test_cli_commands_refuse_outputs_in_a_job_copy_with_exit_status_2(job_copy: Path, tmp_path: Path) -> None:
    """The training job's config error, evaluate's --out and the batch job's --output: one clean message each."""
    from hsivar_platform.cli import build_app
    from typer.testing import CliRunner

    app = build_app()
    r = CliRunner().invoke(app, ["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--print-config"])
    assert r.exit_code == 2 and "run.work_dir: 'work' resolves to" in r.output, r.output
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "none"), "--data", "demo", "--out", "eval",
                                 "--work-dir", str(tmp_path / "w")])
    assert r.exit_code == 2 and "--out: 'eval' resolves to" in r.output, r.output
    r = CliRunner().invoke(app, ["restore", "--input", str(tmp_path), "--output", "restored",
                                 "--model", str(tmp_path / "none"), "--log-dir", str(tmp_path / "logs")])
    assert r.exit_code == 2 and "--output: 'restored' resolves to" in r.output, r.output
    r = CliRunner().invoke(app, ["restore", "--input", "work/raw", "--output", str(tmp_path / "out"),
                                 "--model", str(tmp_path / "none"), "--log-dir", str(tmp_path / "logs")])
    assert r.exit_code == 2 and "--input: 'work/raw' resolves to" in r.output, r.output
