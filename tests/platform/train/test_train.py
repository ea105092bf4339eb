"""Ray Train stages end to end: real local Ray, S3 (moto server) data and checkpoints, SQLite MLflow.

The tiny preset with 8 bands and a few steps per stage; the whole file stays within a few minutes on
2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hsivar_platform import storage
from hsivar_platform.model_uri import PUBLISHED_ARTIFACT_PATH, load_restorer, resolve_model
from hsivar_platform.pipeline_config import load_config
from hsivar_platform.tracking import RunLogger, experiment_id, register_published
from hsivar_platform.train import train_pipeline
from hsivar_platform.train.state import CKPT_CRITIC, CKPT_EMA, CKPT_STATE, load_checkpoint, lr_factor, save_checkpoint

from hsivar.publish import CONFIG_FILE, WEIGHTS_FILE, load_published
from hsivar.synth import make_demo_dataset

REPO = Path(__file__).resolve().parents[3]
BANDS = 8

# A pipeline small enough for seconds per stage: 8 bands, 40×40 cubes → one 40-px window each, 4 crops
# per window; 3 cubes → 12 examples per epoch.
TINY = [f"model.bands={BANDS}", "data.window=40", "data.crops_per_window=4", "data.batch_size=2",
        "data.shuffle_buffer=0", "train.log_every=1", "val.max_cubes=1", "val.levels=middle", "val.batch_size=8"]


def _mlflow(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def demo_local(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("demo8"))
    make_demo_dataset(out, n_train=3, n_val=1, n_test=1, size=40, bands=BANDS, format="npy", seed=3)
    return out


def test_lr_schedule_warms_up_then_decays() -> None:
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.1, abs=1e-3)


def test_a_checkpoint_keeps_the_stage_discriminator(tmp_path: Path) -> None:
    """A stage that trains a discriminator (loss.gan.weight > 0) checkpoints it beside the model and resumes it; a
    checkpoint written without one is refused by name."""
    from hsivar.config import GANConfig
    from hsivar.models.build import build_model
    from hsivar.presets import preset
    from hsivar.training import param_groups, prepare_stage, stage_critic

    def run(gan: float, seed: int):
        cfg = preset("tiny", bands=BANDS, family="restorevar")
        cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"gan": GANConfig(weight=gan)})})
        torch.manual_seed(seed)
        model = build_model(cfg)
        critic = stage_critic(model, "decoder")
        opt = torch.optim.AdamW(param_groups(model, prepare_stage(model, "decoder"), 1e-3, None, critic))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        return model, critic, opt, sched, torch.Generator().manual_seed(seed)

    model, critic, opt, sched, gen = run(0.1, seed=0)
    save_checkpoint(tmp_path / "gan", rank=0, model=model, opt=opt, sched=sched, ema=None, step=5,
                    data_pos={"epoch": 1}, gen=gen, pipeline={}, critic=critic)
    model2, critic2, opt2, sched2, gen2 = run(0.1, seed=1)
    assert not torch.equal(critic.net[0].weight, critic2.net[0].weight)
    step, _ = load_checkpoint(tmp_path / "gan", rank=0, model=model2, opt=opt2, sched=sched2, ema=None, gen=gen2,
                              critic=critic2)
    assert step == 5 and all(torch.equal(a, b) for a, b in zip(critic.state_dict().values(),
                                                                critic2.state_dict().values()))
    model0, _, opt0, sched0, gen0 = run(0.0, seed=0)
    save_checkpoint(tmp_path / "plain", rank=0, model=model0, opt=opt0, sched=sched0, ema=None, step=5,
                    data_pos={}, gen=gen0, pipeline={})
    with pytest.raises(ValueError, match="holds no discriminator"):
        load_checkpoint(tmp_path / "plain", rank=0, model=model2, opt=opt2, sched=sched2, ema=None, gen=gen2,
                        critic=critic2)


def test_registry_contract_models_uri_resolves_to_published_files(published_tiny: Path, mlflow_uri: str,
                                                                   tmp_path: Path, monkeypatch) -> None:
    """Versions 1 and 2 come from two runs holding different weights, so a mix-up of versions (or of runs)
    fails; ``models:/NAME/latest`` (the default of deploy/serve.yaml) is the newest version."""
    from hsivar_platform.model_uri import pin_model_uri

    from hsivar.models.hsivar import HSIVAR
    from hsivar.presets import preset
    from hsivar.publish import save_published

    torch.manual_seed(1)
    other = save_published(HSIVAR(preset("tiny", bands=BANDS)).eval(), tmp_path / "other", stage="decoder")
    weights = {name: (path / WEIGHTS_FILE).read_bytes() for name, path in (("first", published_tiny),
                                                                           ("second", other))}
    assert weights["first"] != weights["second"]
    exp = experiment_id(mlflow_uri, "contract", artifact_location=str(tmp_path / "art"))
    runs = []
    for model_dir in (published_tiny, other):
        run_id = _mlflow(mlflow_uri).create_run(exp).info.run_id
        RunLogger(mlflow_uri, run_id).published_model(model_dir)
        runs.append(run_id)
    assert register_published(mlflow_uri, "hsivar-contract", runs[0]) == "1"
    assert register_published(mlflow_uri, "hsivar-contract", runs[1]) == "2"
    assert _mlflow(mlflow_uri).get_model_version("hsivar-contract", "2").run_id == runs[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    for uri, want in (("models:/hsivar-contract/1", "first"), ("models:/hsivar-contract/2", "second"),
                      ("models:/hsivar-contract/latest", "second")):
        local = resolve_model(uri, tmp_path / "dl" / uri.rsplit("/", 1)[1])
        assert (local / CONFIG_FILE).is_file() and (local / WEIGHTS_FILE).read_bytes() == weights[want], uri
    assert pin_model_uri("models:/hsivar-contract/latest") == "models:/hsivar-contract/2"
    cube = np.random.default_rng(0).random((BANDS, 32, 32)).astype(np.float32)
    restored = load_restorer("models:/hsivar-contract/latest").restore(cube, task="gaussian").cube
    from hsivar.restore import Restorer

    np.testing.assert_array_equal(restored, Restorer.from_published(other).restore(cube, task="gaussian").cube)
    with pytest.raises(FileNotFoundError, match="models:/hsivar-nothing/latest"):
        pin_model_uri("models:/hsivar-nothing/latest")


def test_print_config_from_the_job_and_config_errors(tmp_path: Path) -> None:
    """jobs/train_var.py runs the same Typer command as ``hsivar train`` (flags, overrides, exit codes)."""
    import subprocess
    import sys

    job = [sys.executable, str(REPO / "jobs" / "train_var.py"), "--config", str(REPO / "configs" / "tiny.yaml")]
    ok = subprocess.run([*job, "--print-config", "--run.name", "x1", "--set", f"run.work_dir={tmp_path}"],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "name: x1" in ok.stdout and f"storage_path: {tmp_path}/runs" in ok.stdout
    bad = subprocess.run([*job, "--set", "scaling.num_workers=0"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "scaling.num_workers: Input should be greater than or equal to 1" in bad.stderr

    from hsivar_platform.cli import build_app
    from typer.testing import CliRunner

    app = build_app()
    r = CliRunner().invoke(app, ["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--print-config",
                                 "--set", "train.var.steps=9", "--scaling.num_workers", "2"])
    assert r.exit_code == 0, r.output
    assert "num_workers: 2" in r.output and "steps: 9" in r.output
    r = CliRunner().invoke(app, ["train", "--stage", "gan", "--print-config"])
    assert r.exit_code == 2 and "unknown stage(s) gan" in r.output


@pytest.mark.slow
def test_pipeline_end_to_end_on_s3_with_two_workers(ray_cluster, s3_bucket: str, mlflow_uri: str,
                                                    tmp_path: Path) -> None:
    data = storage.join(s3_bucket, "hsi")
    make_demo_dataset(data, n_train=3, n_val=1, n_test=1, size=40, bands=BANDS, format="tif", seed=1)
    storage.write_bytes(storage.join(data, "train", "cube_9999.h5"), b"corrupt")  # skipped with a warning
    storage_uri = storage.join(s3_bucket, "runs")
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        *TINY, f"data.source={data}", f"run.storage_path={storage_uri}", f"run.work_dir={tmp_path}",
        "run.name=e2e", f"tracking.tracking_uri={mlflow_uri}", "tracking.register_as=hsivar-e2e",
        "scaling.num_workers=2", "scaling.torch_threads=1", "train.vqvae.steps=3", "train.var.steps=3",
        "train.decoder.steps=2", "train.checkpoint_every=2", "train.decoder.torch_threads=2",
        "model.override.loss.gan.weight=0.1"])  # stage decoder trains a discriminator beside the model (DDP)
    lines: list[str] = []
    result = train_pipeline(cfg, echo=lines.append)

    assert result.completed and [s.stage for s in result.stages] == ["vqvae", "var", "decoder"]
    assert result.registered_model == "models:/hsivar-e2e/1"
    config_uri = storage.join(storage_uri, "e2e", "pipeline.yaml")
    assert any(f"resolved config in {config_uri}" in line for line in lines)
    assert "name: e2e" in storage.read_bytes(config_uri).decode()  # the resolved config, in the run's storage
    # the stage's own torch threads while it trains (train.<stage>.torch_threads), else scaling.torch_threads
    assert "[train decoder] steps 1..2 of 2, world size 2, device cpu, 2 torch thread(s)" in lines, lines
    assert "[train var] steps 1..3 of 3, world size 2, device cpu, 1 torch thread(s)" in lines, lines
    for stage in ("vqvae", "var", "decoder"):  # the rank-0 worker's progress reached the driver's console
        assert any(line.startswith(f"[train {stage}] step 1/") for line in lines), lines
        assert any(line.startswith(f"[train {stage}] published") for line in lines), lines
    for s in result.stages:  # published weights at the stable URI, in S3
        assert s.published_uri == storage.join(storage_uri, "e2e", s.stage, "latest")
        doc = json.loads(storage.read_bytes(storage.join(s.published_uri, CONFIG_FILE)))
        assert doc["stage"] == s.stage and doc["metadata"]["complete"] and storage.exists(
            storage.join(s.published_uri, WEIGHTS_FILE))
    ckpts = storage.list_files(storage.join(storage_uri, "e2e", "train", "var"))
    names = {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in ckpts}
    assert {"checkpoint_step0000002/model.safetensors", "checkpoint_step0000002/train_state.pt",
            "checkpoint_step0000002/rng_rank0.pt", "checkpoint_step0000002/rng_rank1.pt",
            "checkpoint_step0000003/pipeline_config.json"} <= names
    ckpts = storage.list_files(storage.join(storage_uri, "e2e", "train", "decoder"))
    assert any(p.endswith(f"checkpoint_step0000002/{CKPT_CRITIC}") for p in ckpts), ckpts  # the discriminator

    # stage decoder fitted the per-family trust on the validation examples: the published config records it
    trust = json.loads(storage.read_bytes(storage.join(result.stages[2].published_uri, CONFIG_FILE)))["model"][
        "fusion"]["trust"]
    assert len(trust) == 6 and all(0 <= t <= 1 for t in trust)
    assert any(line.startswith("[train decoder] trust in the learned correction") for line in lines), lines
    # the published decoder restores a cube through the Restorer
    restorer = load_restorer(result.model_uri)
    assert restorer.cfg.fusion.trust == tuple(trust)
    cube = np.random.default_rng(0).random((BANDS, 40, 36)).astype(np.float32)
    assert restorer.restore(cube).cube.shape == cube.shape
    # stage 2 started from stage 1's weights: the frozen VQ-VAE is unchanged, E_con was copied from E
    m1, _ = load_published(storage.download_dir(result.stages[0].published_uri, tmp_path / "p1"))
    m2, _ = load_published(storage.download_dir(result.stages[1].published_uri, tmp_path / "p2"))
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("vqvae.") and "ema_vocab" not in k)

    # MLflow: parent + nested stage runs, params, metrics, artifacts, registry
    client = _mlflow(mlflow_uri)
    parent = client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["train.vqvae.steps"] == "3" and parent.data.params["model.preset"] == "tiny"
    assert parent.data.params["scaling.num_workers"] == "2"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {r.data.tags["hsivar.stage"]: r for r in children}
    assert set(by_stage) == {"vqvae", "var", "decoder"}
    m = {k: set(v.data.metrics) for k, v in by_stage.items()}
    assert {"loss", "lr", "psnr", "val/recon/psnr"} | {f"codebook_usage_s{k}" for k in range(6)} <= m["vqvae"]
    assert {"ce", "acc"} | {f"acc_s{k}" for k in range(6)} <= m["var"]
    assert {f"trust/{t}" for t in ("gaussian", "bandmiss")} <= m["decoder"]
    assert {"gan_d", "gan_g", "d_real", "d_fake"} <= m["decoder"]
    six = ("gaussian", "complex", "blur", "sr", "inpaint", "bandmiss")
    assert {f"val/{t}/{k}" for t in six for k in ("psnr", "ssim", "sam")} <= m["decoder"]
    # stage var checks its own held-out loss and the token path's reconstruction (train.validate)
    assert {f"val/{t}/{k}" for t in six for k in ("ce", "acc", "token_path_psnr", "token_path_sam")} <= m["var"]
    assert any(line.startswith("[train var] validation at step 3: token accuracy") for line in lines), lines
    assert [h.step for h in client.get_metric_history(by_stage["vqvae"].info.run_id, "loss")] == [1, 2, 3]
    for run in by_stage.values():
        assert run.info.status == "FINISHED" and run.data.params["stage.steps"] in ("2", "3")
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"panels", PUBLISHED_ARTIFACT_PATH} <= arts
        pub = {a.path for a in client.list_artifacts(run.info.run_id, PUBLISHED_ARTIFACT_PATH)}
        assert pub == {f"{PUBLISHED_ARTIFACT_PATH}/{CONFIG_FILE}", f"{PUBLISHED_ARTIFACT_PATH}/{WEIGHTS_FILE}"}
    panels = client.list_artifacts(by_stage["var"].info.run_id, "panels")
    assert panels and panels[0].path.endswith(".png")
    version = client.get_model_version("hsivar-e2e", "1")
    assert version.run_id == by_stage["decoder"].info.run_id

    # a rerun with the same name finds every stage complete and trains nothing
    again = train_pipeline(cfg, echo=lines.append)
    assert all(s.skipped for s in again.stages) and again.registered_model is None


def _train_worker_pid(other_than: int | None = None, timeout_s: float = 120.0) -> int:
    """The process id of the (one) live Ray Train worker (not ``other_than``), from the GCS actor table (the test
    cluster runs no dashboard, so the state API is not there)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [a for a in ray._private.state.actors().values()
                 if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE" and a["Pid"]
                 and a["Pid"] != other_than]
        if alive:
            return int(alive[0]["Pid"])
        time.sleep(0.2)
    raise AssertionError("no live RayTrainWorker appeared")


@pytest.mark.slow
def test_resume_after_interruption_and_a_killed_worker_process(ray_cluster, demo_local: str, mlflow_uri: str,
                                                                tmp_path: Path) -> None:
    """A job stopped at step 2 resumes there; then the Train worker's process is killed (SIGKILL) once Ray Train
    has registered a checkpoint of this job (its checkpoint manager's snapshot on storage names step ≥ 4):
    FailureConfig restarts the worker group from the last registered checkpoint and the step count, the optimizer
    and the MLflow run continue. (A checkpoint written but not yet collected by the controller when the worker
    dies does not count: the restart takes the one before.)"""
    import threading

    steps = 40
    overrides = [*TINY, f"data.source={demo_local}", f"run.work_dir={tmp_path}", "run.name=resume",
                 f"tracking.tracking_uri={mlflow_uri}", "train.stages=[vqvae]", f"train.vqvae.steps={steps}",
                 "train.vqvae.warmup_steps=0", "train.vqvae.ema_decay=0.9", "train.checkpoint_every=4",
                 "train.keep_checkpoints=8", "val.max_cubes=0", "scaling.num_workers=1"]
    first = train_pipeline(load_config(None, [*overrides, "train.stop_after=2"]), echo=lambda s: None)
    assert not first.completed and first.stages[0].step == 2 and first.model_uri is None
    run_root = tmp_path / "runs" / "resume"
    assert (run_root / "train" / "vqvae" / "checkpoint_step0000002" / CKPT_STATE).is_file()
    assert not (run_root / "vqvae" / "latest").exists()

    # the rerun resumes at step 2; once Ray Train has registered one of its checkpoints, the worker is killed
    result: dict[str, object] = {}
    job = threading.Thread(target=lambda: result.update(
        out=train_pipeline(load_config(None, [*overrides, "run.max_failures=1"]), echo=lambda s: None)))
    t0 = time.monotonic()
    job.start()
    pid = _train_worker_pid()
    snapshot = run_root / "train" / "vqvae" / "checkpoint_manager_snapshot.json"
    registered = 0
    while registered < 4 and job.is_alive():
        try:
            registered = int(json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["step"])
        except (OSError, ValueError, KeyError, TypeError):  # not there yet, or caught mid-write
            pass
        time.sleep(0.02)
    assert registered >= 4, "the job ended before Ray Train registered a checkpoint of it"
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    _train_worker_pid(other_than=pid)  # a new worker process takes over
    recovered_s = time.monotonic() - killed_at
    job.join(timeout=600)
    assert not job.is_alive(), "training did not finish after the worker was killed"
    second = result["out"]
    assert second.completed and second.stages[0].step == steps, second  # type: ignore[attr-defined]
    final = run_root / "train" / "vqvae" / f"checkpoint_step{steps:07d}"
    state = torch.load(final / CKPT_STATE, weights_only=True)
    assert state["step"] == steps and state["scheduler"]["last_epoch"] == steps
    assert (final / CKPT_EMA).is_file() and (run_root / "vqvae" / "latest" / WEIGHTS_FILE).is_file()
    assert all(int(s["step"]) == steps for s in state["optimizer"]["state"].values())  # Adam's counter continued

    client = _mlflow(mlflow_uri)
    run_id = second.stages[0].mlflow_run_id  # type: ignore[attr-defined]
    assert run_id == first.stages[0].mlflow_run_id  # the same MLflow stage run continues
    resumed = sorted(h.value for h in client.get_metric_history(run_id, "resumed_from_step"))
    # job 1 started at 0, job 2 at 2, the restarted worker group at the last registered checkpoint
    assert resumed[:2] == [0, 2] and len(resumed) == 3 and resumed[2] >= registered and resumed[2] % 4 == 0, \
        (resumed, registered)
    hist = client.get_metric_history(run_id, "loss")
    assert sorted({h.step for h in hist}) == list(range(1, steps + 1))  # every step logged, none skipped
    loss = {h.step: h.value for h in hist}
    assert loss[steps] < loss[1]  # the loss continues downwards instead of restarting from scratch
    print(f"\n[fault] train worker SIGKILL after Ray Train registered step {registered}: new worker in "
          f"{recovered_s:.1f} s, resumed from step {int(resumed[2])}, job {time.monotonic() - t0:.1f} s")


def _var_checkpoint(path: Path, cfg, seed: int) -> dict[str, torch.Tensor]:
    """A transformer checkpoint in the layout of the released var_d16.pth, sized for ``cfg`` (seeded values)."""
    g = torch.Generator().manual_seed(seed)
    C, L = cfg.transformer.width, sum(p * p for p in cfg.vqvae.patch_nums)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    state = {"word_embed.weight": r(C, cfg.vqvae.z_channels), "word_embed.bias": r(C), "class_emb.weight": r(1001, C),
             "lvl_embed.weight": r(10, C), "pos_start": r(1, 1, C), "pos_1LC": r(1, L, C),
             "head_nm.ada_lin.1.weight": r(2 * C, C), "head.weight": r(cfg.vqvae.vocab_size, C),
             "head.bias": r(cfg.vqvae.vocab_size)}
    for i in range(cfg.transformer.depth):
        p = f"blocks.{i}."
        state |= {p + "attn.mat_qkv.weight": r(3 * C, C), p + "attn.q_bias": r(C), p + "attn.v_bias": r(C),
                  p + "attn.zero_k_bias": torch.zeros(C), p + "attn.scale_mul_1H11": r(1, 2, 1, 1),
                  p + "attn.proj.weight": r(C, C), p + "attn.proj.bias": r(C), p + "ffn.fc1.weight": r(4 * C, C),
                  p + "ffn.fc1.bias": r(4 * C), p + "ffn.fc2.weight": r(C, 4 * C), p + "ffn.fc2.bias": r(C),
                  p + "ada_lin.1.weight": r(6 * C, C)}
    torch.save(state, path)
    return state


@pytest.mark.slow
def test_convert_var_output_starts_a_training_run_as_init_uri(ray_cluster, demo_local: str, mlflow_uri: str,
                                                              tmp_path: Path) -> None:
    """``hsivar convert-var`` (the CLI) publishes a model that ``train.init_uri`` starts stage var from: the
    published var stage holds the converted transformer (one small step away) and the init's frozen VQ-VAE."""
    from hsivar_platform.cli import build_app
    from typer.testing import CliRunner

    from hsivar.presets import preset

    cfg = preset("tiny", bands=BANDS)
    state = _var_checkpoint(tmp_path / "var_d16.pth", cfg, seed=4)
    init = tmp_path / "init"
    torch.manual_seed(123)  # the init's fresh parts differ from what a fresh model of the run (seed 0) would hold
    r = CliRunner().invoke(build_app(), ["convert-var", "--var", str(tmp_path / "var_d16.pth"), "--preset", "tiny",
                                         "--bands", str(BANDS), "--out", str(init)])
    assert r.exit_code == 0, r.output
    assert f"published to {init}" in r.output
    init_model, doc = load_published(init)
    assert doc["stage"] == "init"
    assert torch.equal(init_model.var.blocks[1].attn.mat_qkv.weight, state["blocks.1.attn.mat_qkv.weight"])

    cfg_run = load_config(None, [*TINY, f"data.source={demo_local}", f"run.work_dir={tmp_path}", "run.name=fromvar",
                                 f"tracking.tracking_uri={mlflow_uri}", "train.stages=[var]", f"train.init_uri={init}",
                                 "train.var.steps=1", "train.var.lr=1e-4", "train.var.warmup_steps=0",
                                 "val.max_cubes=0", "scaling.num_workers=1"])
    result = train_pipeline(cfg_run, echo=lambda s: None)
    assert result.completed and [s.stage for s in result.stages] == ["var"]
    trained, _ = load_published(tmp_path / "runs" / "fromvar" / "var" / "latest")
    got, want = trained.state_dict(), init_model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if k.startswith("vqvae.") and "ema_vocab" not in k)
    for key in ("blocks.1.attn.mat_qkv.weight", "blocks.0.ffn.fc1.weight", "word_embed.weight"):
        torch.testing.assert_close(got[f"var.{key}"], state[key], atol=2e-3, rtol=0)  # one step of lr 1e-4


@pytest.mark.slow
def test_ray_job_submit_against_a_local_head(demo_local: str, tmp_path: Path) -> None:
    """``ray job submit --working-dir . -- python jobs/train_var.py …`` on a head node started here with
    HSIVAR_WORK_DIR in its environment, as scripts/local_stack.sh starts it: the job runs in Ray's temporary copy
    of the repository, yet its checkpoints and published weights land in HSIVAR_WORK_DIR, a second submission
    resumes from them, a job without it fails fast naming run.work_dir, and the upload leaves tests/ out."""
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    gcs, dash, agent_http, agent_grpc, client_port = (free_port() for _ in range(5))
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_ACCEPT_CLOUD_OBJECT_STORE_MEMORY_LIMIT": "1"}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "HSIVAR_WORK_DIR"):  # jobs see only the head's settings
        env.pop(name, None)
    work = tmp_path / "work"
    temp = Path(f"/tmp/rjs-{os.getpid()}-{gcs}")
    ray_bin = str(Path(venv_bin) / "ray")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=4", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--ray-client-server-port={client_port}",
         "--object-store-memory=300000000", "--disable-usage-stats"],
        env={**env, "HSIVAR_WORK_DIR": str(work)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while True:  # wait for the job API
            probe = subprocess.run([ray_bin, "job", "list", "--address", address], env=env, capture_output=True,
                                   text=True, timeout=60)
            if probe.returncode == 0:
                break
            assert head.poll() is None, "the head node exited"
            assert time.time() < deadline, f"job API not up: {probe.stderr[-2000:]}"
            time.sleep(2)

        def submit(*entrypoint: str, runtime_env: dict | None = None) -> subprocess.CompletedProcess:
            cmd = [ray_bin, "job", "submit", "--address", address, "--working-dir", str(REPO),
                   *(["--runtime-env-json", json.dumps(runtime_env)] if runtime_env else []), "--", *entrypoint]
            deadline = time.time() + 120
            while True:  # `job list` answers before the head's job agent registers: retry until it accepts
                job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
                if job.returncode == 0 or "No available agent" not in job.stderr or time.time() > deadline:
                    return job
                time.sleep(2)

        # No run.work_dir and no tracking URI: everything goes to the head's HSIVAR_WORK_DIR.
        train = ["python", "jobs/train_var.py", "--config", "configs/tiny.yaml", "--stage", "vqvae",
                 "--set", f"data.source={demo_local}", "--run.name", "job", *[f"--set={o}" for o in TINY]]
        job = submit(*train, "--train.vqvae.steps", "2")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout.lower() and '"completed": true' in job.stdout
        run_root = work / "runs" / "job"
        assert f"checkpoints under {run_root / 'train'}" in job.stdout, job.stdout[-3000:]
        assert (run_root / "train" / "vqvae" / "checkpoint_step0000002" / CKPT_STATE).is_file()
        assert (run_root / "vqvae" / "latest" / CONFIG_FILE).is_file()
        assert (work / "mlflow.db").is_file()

        # The same run name with more steps: a later submission (a new copy) resumes from the checkpoint.
        job = submit(*train, "--train.vqvae.steps", "4")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "resumed from the checkpoint at step 2" in job.stdout, job.stdout[-3000:]
        assert (run_root / "train" / "vqvae" / "checkpoint_step0000004" / CKPT_STATE).is_file()
        assert json.loads((run_root / "vqvae" / "latest" / CONFIG_FILE).read_text())["metadata"]["step"] == 4

        # Without HSIVAR_WORK_DIR the relative work dir would be inside the job's copy: refused before training.
        job = submit(*train, runtime_env={"env_vars": {"HSIVAR_WORK_DIR": ""}})
        out = job.stdout + job.stderr
        assert job.returncode != 0 and "failed" in out.lower(), out[-3000:]
        assert "run.work_dir: 'work' resolves to" in out and "Ray deletes that copy" in out, out[-3000:]
        assert "working_dir_files" in out and "HSIVAR_WORK_DIR" in out

        # What the job's copy holds: the code, not tests/ (.rayignore).
        job = submit("python", "-c", "import os; print('LISTING', sorted(os.listdir('.')))")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        listing = next(line for line in job.stdout.splitlines() if line.startswith("LISTING"))
        assert "'jobs'" in listing and "'hsivar'" in listing and "'platform'" in listing
        assert "'tests'" not in listing and "'work'" not in listing and "'docs'" not in listing, listing
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the head's processes on SIGTERM
            head.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)  # the head's session files and the uploaded copies
