"""Evaluation with Ray Data on the seeded protocol: tables, baselines, MLflow logging, the CLI command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hsivar_platform.data import degrade_case, list_cubes
from hsivar_platform.evaluate import evaluate
from hsivar_platform.evaluate.tables import COLUMNS

from hsivar.degrade import family, protocol_cases
from hsivar.metrics import evaluate as score
from hsivar.restore import Restorer
from hsivar.synth import make_demo_dataset
from hsivar.tasks import DEFAULT_TASKS
from hsivar.uncertainty import coverage_stats

BANDS = 8


@pytest.fixture(scope="module")
def test_cubes(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("evaldata"))
    make_demo_dataset(out, n_train=0, n_val=0, n_test=2, size=40, bands=BANDS, format="npy", seed=7)
    return out


def test_evaluate_writes_tables_and_logs_to_mlflow(ray_cluster, published_tiny: Path, test_cubes: str,
                                                   tmp_path: Path, mlflow_uri: str) -> None:
    res = evaluate(str(published_tiny), test_cubes, tmp_path / "eval", levels="middle", crop=32,
                   tracking_uri=mlflow_uri, work_dir=str(tmp_path), echo=lambda s: None)
    table = pd.read_csv(tmp_path / "eval" / "metrics.csv")
    assert list(table.columns) == list(COLUMNS)
    assert set(table["task"]) == set(DEFAULT_TASKS)
    for task in DEFAULT_TASKS:
        methods = set(table[table["task"] == task]["method"])
        assert methods == {"degraded", "hsivar", *(b.name for b in family(task).baselines)}
    assert (table["n_cubes"] == 2).all() and np.isfinite(table[["psnr", "ssim", "ergas"]]).all().all()
    assert (table[table["method"] == "hsivar"]["seconds_per_cube"] > 0).all()
    cases = pd.read_csv(tmp_path / "eval" / "cases.csv")
    assert len(cases) == 2 * sum(2 + len(family(t).baselines) for t in DEFAULT_TASKS)  # degraded, model, baselines
    # every model row equals a direct Restorer.restore of the same protocol case, scored by hand
    restorer = Restorer.from_published(published_tiny)
    files = list_cubes(test_cubes + "/test")
    for i, uri in enumerate(files):
        for case in protocol_cases("middle"):
            row = degrade_case({"uri": uri, "index": i, "task": case.task, "level": case.level, "case": case.name},
                               bands=BANDS, crop=32)
            direct = restorer.restore(row["degraded"], task="auto", value_range=(0.0, 1.0), batch_size=16)
            out = direct.cube
            want = score(out, row["clean"], row["band_mask"], ergas_ratio=row["ergas_ratio"])
            free = ~direct.kept if direct.kept is not None else np.ones(out.shape, bool)  # synthesised entries
            cover = coverage_stats((out - row["clean"])[free], direct.std[free])  # the model is calibrated
            got = cases[(cases["uri"] == uri) & (cases["case"] == case.name) & (cases["method"] == "hsivar")]
            assert len(got) == 1
            assert got["psnr"].iloc[0] == pytest.approx(want.psnr, abs=1e-3), (uri, case.name)
            assert got["sam"].iloc[0] == pytest.approx(want.sam, abs=1e-3)
            for k, v in cover.items():
                assert got[k].iloc[0] == pytest.approx(v, abs=1e-3), (uri, case.name, k)
    assert table[table["method"] != "hsivar"]["cover_2sigma"].isna().all()
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| task | level | method | PSNR (dB)" in md and "beats degraded" in md
    assert "| task | within 1σ | within 2σ | corr(σ, abs error) |" in md

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(res.mlflow_run_id)
    assert run.data.params["levels"] == "middle" and run.data.params["model_uri"] == str(published_tiny)
    assert "eval/gaussian/hsivar/psnr" in run.data.metrics and "eval/sr/bicubic/psnr" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(res.mlflow_run_id, "evaluation")}
    assert {"evaluation/metrics.csv", "evaluation/metrics.md"} <= arts

    # the same protocol, so the same degraded rows: the evaluation is reproducible
    again = evaluate(str(published_tiny), test_cubes, tmp_path / "eval2", levels="middle", crop=32,
                     log_mlflow=False, baselines=False, echo=lambda s: None)
    a = table[table["method"] == "degraded"].reset_index(drop=True)
    b = again.table[again.table["method"] == "degraded"].reset_index(drop=True)
    assert np.allclose(a["psnr"], b["psnr"])


def test_evaluate_command_on_the_cli(ray_cluster, published_tiny: Path, test_cubes: str, tmp_path: Path,
                                     mlflow_uri: str) -> None:
    from hsivar_platform.cli import build_app

    app = build_app()
    from typer.testing import CliRunner

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["evaluate", "--model", str(published_tiny), "--data", test_cubes, "--out", str(out),
                                 "--levels", "middle", "--max-cubes", "1", "--crop", "32", "--no-baselines",
                                 "--perceptual", "gmsd", "--perceptual", "nlpd",
                                 "--tracking-uri", mlflow_uri, "--work-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "metrics.csv")
    assert set(table["method"]) == {"degraded", "hsivar"} and (table["n_cubes"] == 1).all()
    # the weight-free perceptual metrics, per row and in the Markdown (lower is better for both)
    assert table["gmsd"].between(0, 1).all() and (table["nlpd"] >= 0).all()
    assert "| task | method | gmsd ↓ | nlpd ↓ |" in (out / "metrics.md").read_text()
    odd = CliRunner().invoke(app, ["evaluate", "--model", str(published_tiny), "--data", test_cubes,
                                   "--out", str(out), "--perceptual", "beauty", "--no-mlflow"])
    assert odd.exit_code == 2 and "unknown perceptual metric(s) beauty" in odd.output
    bad = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "nope"), "--data", test_cubes,
                                   "--out", str(out), "--no-mlflow"])
    assert bad.exit_code == 2 and "not a published model directory" in bad.output


def test_several_models_are_compared_in_one_run(ray_cluster, published_tiny: Path, test_cubes: str,
                                                tmp_path: Path) -> None:
    """``--model`` repeated: each model restores the same degraded cubes (its rows equal its own single-model
    evaluation), its rows carry its label (LABEL=URI, else its family), and metrics.md has a summary per model."""
    import torch
    from hsivar_platform.cli import build_app
    from typer.testing import CliRunner

    from hsivar.models.build import build_model
    from hsivar.presets import preset
    from hsivar.publish import save_published

    torch.manual_seed(1)
    rv = save_published(build_model(preset("tiny", bands=BANDS, family="restorevar")).eval(), tmp_path / "rv",
                        stage="decoder")
    out = tmp_path / "both"
    app = build_app()
    common = ["--data", test_cubes, "--levels", "middle", "--max-cubes", "1", "--crop", "32", "--no-mlflow",
              "--work-dir", str(tmp_path)]
    r = CliRunner().invoke(app, ["evaluate", "--model", f"ours={published_tiny}", "--model", str(rv),
                                 "--out", str(out), *common])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "metrics.csv")
    assert {"degraded", "ours", "restorevar"} <= set(table["method"]) and "hsivar" not in set(table["method"])
    md = (out / "metrics.md").read_text()
    assert "Per family — ours" in md and "Per family — restorevar" in md and "| restorevar PSNR / SSIM / SAM |" in md
    # the restorevar rows are what evaluating it alone gives
    alone = evaluate(str(rv), test_cubes, tmp_path / "alone", levels="middle", max_cubes=1, crop=32,
                     baselines=False, log_mlflow=False, work_dir=str(tmp_path), echo=lambda s: None).table
    got = table[table["method"] == "restorevar"].set_index("case")["psnr"]
    want = alone[alone["method"] == "hsivar"].set_index("case")["psnr"]
    assert np.allclose(got.sort_index(), want.sort_index(), atol=1e-4)

    clash = CliRunner().invoke(app, ["evaluate", "--model", str(published_tiny), "--model", f"degraded={rv}",
                                     "--out", str(tmp_path / "clash"), *common])
    assert clash.exit_code == 2 and "distinct labels" in clash.output
    rgb = save_published(build_model(preset("tiny", bands=3)).eval(), tmp_path / "rgb", stage="decoder")
    mixed = CliRunner().invoke(app, ["evaluate", "--model", f"eight={published_tiny}", "--model", f"three={rgb}",
                                     "--out", str(tmp_path / "mixed"), *common])
    assert mixed.exit_code == 2 and "one protocol cannot judge both" in mixed.output


def test_a_blur_margin_blurs_the_scene_around_the_crop(test_cubes: str) -> None:
    """``blur_margin``: a blur case blurs the scene around the crop too, so the crop has no zero-padded border (a
    camera's blurred image) while its clean cube is the protocol's; other families are as without it; a cube too
    small for the margin is skipped; a margin without a crop is refused before anything runs."""
    from hsivar.deblur import border_of
    from hsivar.kernels import blur_sigma

    uri = list_cubes(test_cubes + "/test")[0]

    def row(task: str, level: float, **kw: int) -> dict | None:
        return degrade_case({"uri": uri, "index": 0, "task": task, "level": level, "case": f"{task}-{level:g}"},
                            bands=BANDS, crop=24, **kw)

    plain, scene = row("blur", 9), row("blur", 9, blur_margin=8)
    assert plain is not None and scene is not None
    assert np.array_equal(scene["clean"], plain["clean"]) and scene["degraded"].shape == (BANDS, 24, 24)
    assert border_of(plain["degraded"], blur_sigma(9)) == "zero"
    assert border_of(scene["degraded"], blur_sigma(9)) == "free"
    assert not np.allclose(scene["degraded"][:, :3], plain["degraded"][:, :3])  # the edge is not darkened
    assert np.allclose(scene["degraded"][:, 10:14, 10:14], plain["degraded"][:, 10:14, 10:14])  # the inside is alike
    noisy, noisy_margin = row("gaussian", 30), row("gaussian", 30, blur_margin=8)
    assert np.array_equal(noisy["degraded"], noisy_margin["degraded"])  # type: ignore[index]
    assert row("blur", 9, blur_margin=9) is None  # 24 + 2·9 = 42 px > the 40-px cube
    with pytest.raises(ValueError, match="needs a crop"):
        evaluate("unused", test_cubes, Path(test_cubes) / "never", crop=None, blur_margin=8, echo=lambda s: None)
