"""Pipeline config and the Ray Data pipelines: real local Ray, a real local S3 server, real cube files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hsivar_platform import storage
from hsivar_platform.data import (
    TRAINING_BLOCK_BYTES,
    dihedral,
    list_cubes,
    protocol_dataset,
    random_gain,
    read_crops,
    resolve_splits,
    scene_windows,
    training_dataset,
)
from hsivar_platform.pipeline_config import (
    ConfigError,
    DataSpec,
    PipelineConfig,
    check_stages,
    load_config,
    split_dotted_args,
)

from hsivar.degrade import protocol_cases
from hsivar.io import CubeMeta, write_cube
from hsivar.synth import make_cube
from hsivar.tasks import DEFAULT_TASKS

REPO = Path(__file__).resolve().parents[2]
BANDS = 8


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("name", ["tiny", "small", "paper"])
def test_shipped_configs_validate_and_build_their_preset(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.model.preset == name
    mcfg = cfg.model_cfg()
    assert mcfg.name == name and mcfg.bands == cfg.model.bands
    assert cfg.stages() == ("vqvae", "var", "decoder")


def test_the_model_family_sets_the_stages() -> None:
    """model.family picks the family's stage list (RestoreVAR adds refiner); a stage of another family is refused."""
    rv = load_config(REPO / "configs" / "tiny.yaml", ["model.family=restorevar"])
    assert rv.stages() == ("vqvae", "var", "refiner", "decoder")
    assert rv.model_cfg().family == "restorevar" and not rv.model_cfg().transformer.aligned_condition
    assert rv.registered_model_name() == "restorevar-tiny"  # never a new version of hsivar-tiny
    assert load_config(REPO / "configs" / "tiny.yaml").registered_model_name() == "hsivar-tiny"
    assert check_stages(["decoder", "refiner"], rv.model_cfg().stages) == ["refiner", "decoder"]
    with pytest.raises(ConfigError, match=r"train.stages: refiner not a stage of the hsivar family"):
        load_config(REPO / "configs" / "tiny.yaml", ["train.stages=[vqvae, refiner]"])
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) refiner; expected vqvae, var, decoder"):
        check_stages(["refiner"], load_config(REPO / "configs" / "tiny.yaml").model_cfg().stages)
    with pytest.raises(ConfigError, match=r"model.family"):
        load_config(REPO / "configs" / "tiny.yaml", ["model.family=diffusion"])


@pytest.mark.parametrize("family", ["hsivar", "restorevar"])
def test_only_the_last_stage_validates_on_every_level(family: str) -> None:
    """The last stage the pipeline runs validates (and calibrates) on val.levels; the stages before it check
    progress on val.levels_between — also when train.stages stops early, and for the landsat8 config of any family."""
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"model.family={family}"])
    *before, last = cfg.stages()
    assert cfg.val_levels(last) == "all" and {cfg.val_levels(s) for s in before} == {"middle"}
    short = load_config(REPO / "configs" / "tiny.yaml", [f"model.family={family}", "train.stages=[vqvae, var]"])
    assert short.val_levels("var") == "all" and short.val_levels("vqvae") == "middle"
    every = load_config(REPO / "configs" / "tiny.yaml", [f"model.family={family}", "val.levels_between=all"])
    assert {every.val_levels(s) for s in every.stages()} == {"all"}
    landsat = load_config(REPO / "configs" / "landsat8.yaml", [f"model.family={family}"])
    assert landsat.stages() == landsat.model_cfg().stages and landsat.registered_model_name() == f"{family}-landsat8"


def test_overrides_dotted_options_and_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = split_dotted_args(["--scaling.num_workers", "2", "--train.var.lr=5e-4"])
    cfg = load_config(REPO / "configs" / "tiny.yaml",
                      ["train.vqvae.steps=7", "model.override={transformer: {depth: 3}}",
                       f"run.work_dir={tmp_path}", "data.value_range=[0, 4095]", *args])
    assert cfg.train.vqvae.steps == 7 and cfg.train.vqvae.lr == 2e-3  # the rest of the section is kept
    assert cfg.scaling.num_workers == 2 and cfg.train.var.lr == 5e-4
    assert cfg.model_cfg().transformer.depth == 3 and cfg.data.value_range == (0.0, 4095.0)
    r = cfg.resolved()
    assert r.run.storage_path == str(tmp_path / "runs")
    assert r.published_uri("var") == str(tmp_path / "runs" / "hsivar-tiny" / "var" / "latest")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cfg.resolved().tracking.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert cfg.resolved().tracking.tracking_uri == "http://mlflow.example:5000"
    assert r.flat()["train.vqvae.steps"] == 7
    assert PipelineConfig.model_validate(r.model_dump(mode="json")) == r  # what workers receive round-trips
    # a relative local init_uri is made absolute (Train workers run elsewhere); URIs are kept as given
    rel = load_config(REPO / "configs" / "tiny.yaml", ["train.init_uri=runs/x/var/latest"]).resolved()
    assert rel.train.init_uri == str(Path("runs/x/var/latest").absolute())
    s3 = load_config(REPO / "configs" / "tiny.yaml", ["train.init_uri=s3://b/runs/x/var/latest"]).resolved()
    assert s3.train.init_uri == "s3://b/runs/x/var/latest"
    assert check_stages(["decoder", "vqvae"]) == ["vqvae", "decoder"]


def test_invalid_configs_name_the_file_and_field(tmp_path: Path) -> None:
    msg = r"tiny.yaml \(with overrides\): train.vqvae.steps: .*greater than or equal to 1 \(got 0\)"
    with pytest.raises(ConfigError, match=msg):
        load_config(REPO / "configs" / "tiny.yaml", ["train.vqvae.steps=0"])
    with pytest.raises(ConfigError, match=r"scaling.num_wokers: Extra inputs are not permitted"):
        load_config(None, ["scaling.num_wokers=2"])
    with pytest.raises(ConfigError, match=r"model.preset: .*unknown preset 'huge'"):
        load_config(None, ["model.preset=huge"])
    with pytest.raises(ConfigError, match=r"model: .*override.transformer.depth: .*greater than or equal to 1"):
        load_config(None, ["model.override={transformer: {depth: 0}}"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown stage"):
        check_stages(["vqvae", "gan"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["train.vqvae.steps"])


def test_a_model_trains_on_the_families_its_config_lists() -> None:
    """model.override.dag.tasks picks the families (in the model's own order); the sampler draws only those and
    labels each tile in that order."""
    from hsivar_platform.data import degrade_batch

    cfg = load_config(REPO / "configs" / "tiny.yaml", ["model.override={dag: {tasks: [lowlight, gaussian, haze]}}"])
    tasks = cfg.model_cfg().dag.tasks
    assert tasks == ("lowlight", "gaussian", "haze")
    hq = np.stack([_cube(i, 32, 32) / 1000.0 for i in range(12)]).astype(np.float32)
    out = degrade_batch({"hq": hq}, tasks=tasks, estimate=True)
    w = out["task_weights"]
    assert w.shape == (12, 3) and (w.sum(1) == 1).all() and set(np.flatnonzero(w.sum(0))) <= {0, 1, 2}
    assert out["x0"].shape == hq.shape and not out["kept"].any()  # noisy, hazy or dark: nothing exact
    with pytest.raises(ConfigError, match=r"dag.tasks must list distinct families of .*got \['rain'\]"):
        load_config(REPO / "configs" / "tiny.yaml", ["model.override={dag: {tasks: [rain]}}"]).model_cfg()


# ------------------------------------------------------------------------------------------ rows


def _cube(seed: int, h: int, w: int, bands: int = BANDS) -> np.ndarray:
    cube, _ = make_cube(seed=seed, size=max(h, w), bands=bands)
    return cube[:, :h, :w] * 1000.0  # source units, not [0, 1]


def test_scene_windows_cover_the_scene_from_its_header(tmp_path: Path) -> None:
    uri = str(tmp_path / "scene.tif")
    write_cube(uri, _cube(1, 70, 100), CubeMeta(bands=BANDS))
    rows = scene_windows({"uri": uri}, window=32, tile=32, bands=BANDS)
    covered = np.zeros((70, 100), bool)
    for r in rows:
        assert r["size"] == 32 and r["uri"] == uri
        covered[r["row0"]:r["row0"] + 32, r["col0"]:r["col0"] + 32] = True
    assert covered.all() and len(rows) == 3 * 4
    # a 16×16 window setting is raised to the tile; wrong band counts and tiny scenes are skipped
    assert {r["size"] for r in scene_windows({"uri": uri}, window=16, tile=32, bands=BANDS)} == {32}
    assert scene_windows({"uri": uri}, window=32, tile=32, bands=BANDS + 1) == []
    assert scene_windows({"uri": uri}, window=128, tile=128, bands=BANDS) == []

    batch = {k: np.array([r[k] for r in rows[:2]]) for k in rows[0]}
    out = read_crops(batch, bands=BANDS, tile=32, crops_per_window=3, augment=True, value_range=None)
    assert out["hq"].shape == (6, BANDS, 32, 32) and out["hq"].dtype == np.float32
    assert out["hq"].min() >= 0 and out["hq"].max() <= 1


def test_dihedral_gives_eight_distinct_transforms() -> None:
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    outs = {dihedral(x, k).tobytes() for k in range(8)}
    assert len(outs) == 8


def test_random_gain_spans_its_range_and_never_leaves_unit_range() -> None:
    rng = np.random.default_rng(0)
    dark = np.full((3, 4, 4), 0.2, np.float32)
    gains = np.array([random_gain(dark, (0.5, 2.0), rng)[0, 0, 0] / 0.2 for _ in range(400)])
    assert gains.min() < 0.6 and gains.max() > 1.8 and np.all((gains >= 0.5 - 1e-6) & (gains <= 2 + 1e-6))
    bright = np.linspace(0, 0.9, 48, dtype=np.float32).reshape(3, 4, 4)
    outs = [random_gain(bright, (0.5, 2.0), rng) for _ in range(200)]
    assert all(o.max() <= 1.0 + 1e-6 and o.dtype == np.float32 for o in outs)
    assert max(o.max() for o in outs) == pytest.approx(1.0, abs=1e-6)  # capped at 1 / peak, not clipped


def test_training_stream_from_s3_skips_corrupt_and_mismatched_cubes(ray_cluster, s3_bucket: str) -> None:
    prefix = storage.join(s3_bucket, "clean")
    write_cube(storage.join(prefix, "a.tif"), _cube(2, 48, 40), CubeMeta(bands=BANDS),
               storage_options=storage.storage_options(prefix))
    write_cube(storage.join(prefix, "sub", "b.npy"), _cube(3, 40, 40), CubeMeta(bands=BANDS),
               storage_options=storage.storage_options(prefix))
    write_cube(storage.join(prefix, "wrong_bands.npy"), _cube(4, 40, 40, bands=5), CubeMeta(bands=5),
               storage_options=storage.storage_options(prefix))
    storage.write_bytes(storage.join(prefix, "corrupt.h5"), b"not an hdf5 file")
    storage.write_bytes(storage.join(prefix, "notes.txt"), b"ignored")
    files = list_cubes(prefix)
    assert len(files) == 4 and all(f.startswith("s3://") for f in files)

    data = DataSpec(window=40, crops_per_window=3, batch_size=2)
    ds = training_dataset(files, data, bands=BANDS, tile=32)
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    hq = np.concatenate([b["hq"] for b in batches])
    lq = np.concatenate([b["lq"] for b in batches])
    w = np.concatenate([b["task_weights"] for b in batches])
    # a.tif: 2×1 windows of 40 (48 rows), b.npy: 1 window → 3 windows × 3 crops; the bad files add nothing
    assert hq.shape == (9, BANDS, 32, 32) and lq.shape == hq.shape and w.shape == (9, len(DEFAULT_TASKS))
    assert hq.min() >= 0 and hq.max() <= 1 and np.allclose(w.sum(1), 1) and set(np.unique(w)) <= {0.0, 1.0}
    assert not np.allclose(hq, lq)

    with pytest.raises(FileNotFoundError, match="no cube files"):
        list_cubes(storage.join(s3_bucket, "empty"))


def test_the_training_stream_hands_on_examples_in_small_blocks(ray_cluster, tmp_path: Path) -> None:
    """A window's 48 crops with first estimates (≈20 MB) reach the trainer in blocks near TRAINING_BLOCK_BYTES, not in
    one block per map task (Ray Data's default target, 128 MiB, made every pass wait for ≈256 examples)."""
    write_cube(str(tmp_path / "c.npy"), _cube(5, 32, 32, bands=31), CubeMeta(bands=31))
    ds = training_dataset(list_cubes(str(tmp_path)), DataSpec(window=32, crops_per_window=48), bands=31, tile=32,
                          estimate=True)
    blocks = list(ds.iter_batches(batch_size=None, batch_format="numpy"))  # one batch per block
    sizes = [sum(v.nbytes for v in b.values()) for b in blocks]
    assert sum(len(b["hq"]) for b in blocks) == 48 and sum(sizes) > 4 * TRAINING_BLOCK_BYTES
    assert len(blocks) >= 3 and max(sizes) <= 2 * TRAINING_BLOCK_BYTES, sizes


def test_a_concurrency_limit_keeps_reading_and_degrading_one_task(ray_cluster, tmp_path: Path) -> None:
    """``data.read_concurrency`` bounds the whole read-crop-degrade step: every crop still arrives, degraded with its
    first estimate, from one fused operator (a limit on the reads alone would split it and leave the degrading free)."""
    for i in range(3):
        write_cube(str(tmp_path / f"c{i}.npy"), _cube(20 + i, 32, 32, bands=31), CubeMeta(bands=31))
    ds = training_dataset(list_cubes(str(tmp_path)), DataSpec(window=32, crops_per_window=5, read_concurrency=1),
                          bands=31, tile=32, estimate=True)
    rows = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    assert sum(len(b["hq"]) for b in rows) == 15 and all({"lq", "x0", "kept"} <= set(b) for b in rows)
    assert "MapBatches(read_crops)->MapBatches(degrade_batch)" in ds.stats()


def test_protocol_dataset_is_seeded_and_scores_missing_bands(ray_cluster, tmp_path: Path) -> None:
    for i in range(2):
        write_cube(str(tmp_path / f"c{i}.npy"), _cube(10 + i, 40, 40), CubeMeta(bands=BANDS))
    files = list_cubes(str(tmp_path))
    cases = protocol_cases("middle")
    assert [c.task for c in cases] == ["gaussian", "complex", "blur", "sr", "inpaint", "bandmiss"]
    assert len(protocol_cases("all")) == 19
    rows1 = protocol_dataset(files, cases, bands=BANDS, crop=32).take_all()
    rows2 = protocol_dataset(files, cases, bands=BANDS, crop=32).take_all()
    key = lambda r: (r["uri"], r["case"])  # noqa: E731
    rows1, rows2 = sorted(rows1, key=key), sorted(rows2, key=key)
    assert len(rows1) == 12
    for a, b in zip(rows1, rows2):
        assert a["clean"].shape == (BANDS, 32, 32) and np.array_equal(a["degraded"], b["degraded"])
        assert a["clean"].min() == 0 and a["clean"].max() == 1
    bm = [r for r in rows1 if r["task"] == "bandmiss"][0]
    missing = ~np.any(bm["degraded"].reshape(BANDS, -1) != 0, axis=1)
    assert np.array_equal(bm["band_mask"], missing) and 0 < missing.sum() < BANDS
    sr = [r for r in rows1 if r["task"] == "sr"][0]
    assert sr["ergas_ratio"] == pytest.approx(0.25)


def test_demo_source_is_generated_once_into_the_work_dir(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.demo.n_train=2", "data.demo.n_val=1", "data.demo.n_test=1",
                             "data.demo.size=32", f"model.bands={BANDS}"])
    splits = resolve_splits(cfg.data, tmp_path, BANDS)
    assert splits.train.startswith(str(tmp_path / "data" / "demo-")) and splits.train.endswith("train")
    assert len(list_cubes(splits.train)) == 2 and splits.val and splits.test
    manifest = Path(splits.train).parent / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert resolve_splits(cfg.data, tmp_path, BANDS) == splits and manifest.stat().st_mtime_ns == stamp
    # a plain prefix without split folders is all training data
    flat = resolve_splits(DataSpec(source=splits.train), tmp_path, BANDS)
    assert flat.train == splits.train and flat.val is None
