"""A three-band model restores ordinary photographs (PNG with alpha, JPEG) through ``hsivar restore`` on real local
Ray: outputs in the input's format and dtype, equal to Restorer; sidecars that an image cannot hold as GeoTIFFs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hsivar_platform.batch import read_manifest
from PIL import Image
from typer.testing import CliRunner

from hsivar.io import read_cube, write_cube
from hsivar.models.hsivar import HSIVAR
from hsivar.presets import preset
from hsivar.restore import Restorer


@pytest.fixture(scope="module")
def published_rgb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published (randomly initialised, seeded) tiny model of 3 bands, output head on, calibrated uncertainty."""
    from hsivar.publish import save_published

    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=3)).eval()
    with torch.no_grad():
        model.fusion.gate.weight.fill_(0.5)
        model.fusion.ending.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
    model.set_uncertainty(tuple((0.5 * k, 0.5, 1.0, 1.0, 1e-4 * k) for k in range(1, len(model.dag.tasks) + 1)))
    return save_published(model, tmp_path_factory.mktemp("published") / "rgb", stage="decoder")


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth (h, w, 3) uint8 photograph (noise-free: its observed pixels count as exact and are kept)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    clean = np.stack([0.5 + 0.35 * np.sin(4 * xx + k + seed) * np.cos(3 * yy - k) for k in range(3)], axis=-1)
    return np.round(clean * 255).astype(np.uint8)


def test_rgb_model_restores_png_and_jpeg_photos(ray_cluster: None, published_rgb: Path, tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "restored"
    raw.mkdir()
    rgba = np.dstack([_photo(40, 48, 0), np.full((40, 48), 255, np.uint8)])
    rgba[5:12, 8:20, 3] = 0  # a hole the image does not show
    Image.fromarray(rgba, mode="RGBA").save(raw / "holed.png")
    Image.fromarray(_photo(36, 44, 1)).save(raw / "photo.jpg", quality=90)
    Image.fromarray(_photo(32, 32, 2)[..., 0]).save(raw / "grey.png")  # one band: not this model's

    from hsivar_platform.cli import build_app

    result = CliRunner().invoke(build_app(), ["restore", "--input", str(raw), "--output", str(out), "--model",
                                              str(published_rgb), "--uncertainty", "--kept-mask", "--json",
                                              "--log-level", "WARNING"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["ok"], report["failed"]) == (2, 1)
    rows = {Path(k).name: r for k, r in read_manifest(str(out)).items()}
    assert "1 bands but the model restores 3" in rows["grey.png"]["error"]

    restorer = Restorer.from_published(published_rgb)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers, so float sums run in the same order
    for name, kept_name in (("holed.png", "holed.kept.png"), ("photo.jpg", "photo.kept.tif")):
        cube, meta = read_cube(raw / name)
        restored, out_meta = read_cube(out / name)
        assert out_meta.format == meta.format and out_meta.dtype == "uint8" and restored.shape == cube.shape
        assert out_meta.missing is None  # every pixel holds a value now: no alpha hole
        assert meta.extras["full_range"] == (0.0, 255.0)  # the batch job normalises an image by its full scale
        ref = restorer.restore(cube, nodata=meta.nodata, missing=meta.missing, value_range=(0.0, 255.0))
        expected = np.clip(np.rint(ref.cube), 0, 255)
        if meta.format == "jpeg":  # lossy: compare with the reference encoded the same way
            write_cube(tmp_path / "ref.jpg", ref.cube, dtype="uint8")
            encoded = read_cube(tmp_path / "ref.jpg")[0]
            assert np.abs(restored - encoded).mean() < 0.5 and np.abs(restored - expected).mean() < 8.0
        else:
            np.testing.assert_allclose(restored, expected, atol=1.0)
        std, std_meta = read_cube(out / (name.split(".")[0] + ".std.tif"))
        assert std_meta.dtype == "float32" and ref.std is not None
        np.testing.assert_allclose(std, ref.std, rtol=0, atol=1e-3)  # zero where an entry is kept as observed
        assert rows[name]["uncertainty_uri"].endswith(".std.tif")
        if ref.kept is not None:  # written when some entries were kept as observed
            kept, _ = read_cube(out / kept_name)
            np.testing.assert_array_equal(kept.astype(bool), ref.kept)
            assert rows[name]["kept_uri"].endswith(kept_name)
    torch.set_num_threads(threads)
    assert read_cube(raw / "holed.png")[1].missing[:, 5:12, 8:20].all()  # type: ignore[index]
    kept_png, _ = read_cube(out / "holed.kept.png")
    assert kept_png.mean() > 0.5 and not kept_png[:, 5:12, 8:20].any()  # the hole was synthesised, not kept
