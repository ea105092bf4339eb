"""Archive I/O through the batch job on real local Ray: sensor products in (EnMAP, PRISMA, EMIT, COG, as the demo
maker writes them), Cloud-Optimized GeoTIFFs and STAC Items + Collection out, STAC JSON as an input."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
from hsivar_platform import storage
from hsivar_platform.batch import BatchOptions, read_manifest, run_batch
from hsivar_platform.batch.stac import COLLECTION_NAME, ITEM_SUFFIX, validate
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from hsivar.io import detect_format, emit, read_cube
from hsivar.synth import make_demo_dataset

PRODUCTS = ("enmap", "prisma", "emit", "cog")


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _one_scene(root: Path, fmt: str) -> Path:
    """One 8-band 24 x 24 scene in ``fmt``'s real layout under ``root/<fmt>``, by the demo maker; → its file."""
    written = make_demo_dataset(str(root / fmt), n_train=0, n_val=0, n_test=1, size=24, bands=8, format=fmt, seed=3)
    return Path(written[0])


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """``raw/`` holding one good scene per product type and three malformed products; → (raw, good, bad)."""
    raw = tmp_path / "raw"
    good = {fmt: _one_scene(raw, fmt) for fmt in PRODUCTS}
    bad_root = tmp_path / "bad"
    bad = {fmt: _one_scene(bad_root, fmt) for fmt in ("enmap", "prisma", "emit")}
    for fmt, path in bad.items():  # move the malformed copies under raw/bad/
        target = raw / "bad" / fmt
        target.mkdir(parents=True)
        for f in path.parent.iterdir():
            f.rename(target / f.name)
        bad[fmt] = target / path.name
    next(bad["enmap"].parent.glob("*-METADATA.XML")).unlink()  # missing XML
    data = bad["prisma"].read_bytes()
    bad["prisma"].write_bytes(data[: len(data) // 2])  # truncated HE5
    with h5py.File(bad["emit"], "r+") as h5:  # wrong band count: 7 wavelengths for 8 bands
        del h5["sensor_band_parameters/wavelengths"]
        h5["sensor_band_parameters/wavelengths"] = np.linspace(400, 700, 7).astype(np.float32)
    no_glt = _one_scene(tmp_path / "noglt", "emit")  # an EMIT file without its geolocation table still restores
    with h5py.File(no_glt, "r+") as h5:
        del h5["location/glt_x"], h5["location/glt_y"]
    (raw / "noglt").mkdir()
    good["emit_without_glt"] = no_glt.rename(raw / "noglt" / no_glt.name)
    return raw, good, bad


def test_products_in_cogs_and_stac_out_then_stac_in(ray_cluster: None, published_tiny: Path, tmp_path: Path,
                                                    archive: tuple[Path, dict[str, Path], dict[str, Path]]) -> None:
    raw, good, bad = archive
    assert {fmt: detect_format(path) for fmt, path in good.items()} == {**{f: f for f in PRODUCTS}, "cog": "geotiff",
                                                                        "emit_without_glt": "emit"}
    out = tmp_path / "restored"
    report = run_batch(BatchOptions(input=str(raw), output=str(out), model=str(published_tiny)))
    assert (report.ok, report.failed, report.skipped) == (5, 3, 4), report.failures  # skipped: the manifest.json files

    # Malformed products: a manifest row each, naming the file and the problem; the job went on.
    rows = read_manifest(str(out))
    problems = {"enmap": "METADATA.XML", "prisma": "prisma", "emit": "wavelengths"}
    for fmt, path in bad.items():
        row = rows[str(path)]
        assert row["status"] == "failed" and str(path) in row["error"] and problems[fmt] in row["error"], row

    # Every restored product is a valid COG with the input's wavelengths and georeferencing, and has a valid STAC
    # Item whose bands, projection and provenance say the same.
    items = {}
    for fmt, src in good.items():
        row = rows[str(src)]
        dst = Path(row["output_uri"])
        assert row["status"] == "ok" and dst.suffix == ".tif" and detect_format(dst) == "geotiff", row
        assert dst.parent == out / src.parent.relative_to(raw)
        valid, errors, _ = cog_validate(str(dst))
        assert valid, errors
        _, meta_in = read_cube(src, allow_nonfinite=True)
        cube, meta = read_cube(dst)
        assert cube.shape == (8, 24, 24) and np.isfinite(cube).all()
        assert meta.wavelengths == pytest.approx(meta_in.wavelengths)
        assert (meta.fwhm == pytest.approx(meta_in.fwhm)) if meta_in.fwhm else meta.fwhm is None, fmt
        assert meta.transform == pytest.approx(meta_in.transform) if meta_in.transform else meta.transform is None
        assert (CRS.from_user_input(meta.crs) == CRS.from_user_input(meta_in.crs)) if meta_in.crs else not meta.crs
        item = json.loads(Path(row["stac_item_uri"]).read_text())
        assert row["stac_item_uri"] == f"{dst}{ITEM_SUFFIX}"
        checked, not_checked = validate(item)  # the core schema (offline); extensions only with local schemas
        assert checked[0].endswith("item-spec/json-schema/item.json") and set(checked + not_checked) == {
            checked[0], *item["stac_extensions"]}
        data = item["assets"]["data"]
        assert data["href"] == f"./{dst.name}" and data["type"].endswith("profile=cloud-optimized")
        assert [b["center_wavelength"] * 1000 for b in data["eo:bands"]] == pytest.approx(meta_in.wavelengths)
        props = item["properties"]
        assert props["hsivar:input"] == str(src) and props["hsivar:input_sha256"] == storage.sha256(str(src))
        assert props["hsivar:model"] == report.model and props["hsivar:task"] in props["hsivar:task_weights"]
        assert (props["hsivar:samples"], props["hsivar:seed"], props["hsivar:family"]) == (1, 0, "hsivar")
        assert {"rel": "derived_from", "href": str(src)} in item["links"]
        if meta_in.crs is not None:
            assert props["proj:transform"] == pytest.approx(list(meta_in.transform)) and item["bbox"]
        acquired = meta_in.extras.get("product", {}).get("datetime")  # the products say when they were acquired
        assert row["warning"] is None, row["warning"]
        if fmt != "cog":
            assert _instant(props["datetime"]) == _instant(acquired) and "hsivar:datetime_is_processing_time" not in \
                props
        items[fmt] = item

    # EMIT stays on its swath grid; its geolocation table travels beside the output, on the ortho grid.
    glt_out = Path(rows[str(good["emit"])]["output_uri"]).with_suffix(".glt.tif")
    glt, crs, transform = emit.read_glt(str(good["emit"]))
    glt_back, glt_meta = read_cube(glt_out)
    np.testing.assert_array_equal(glt_back, glt)
    assert cog_validate(str(glt_out))[0]
    assert glt_meta.transform == pytest.approx(tuple(transform)) and CRS.from_user_input(glt_meta.crs) == \
        CRS.from_user_input(crs)
    assert items["emit"]["assets"]["glt"]["href"] == f"./{glt_out.name}" and items["emit"]["bbox"]
    assert "glt" not in items["emit_without_glt"]["assets"] and items["emit_without_glt"].get("bbox") is None
    assert not Path(rows[str(good["emit_without_glt"])]["output_uri"]).with_suffix(".glt.tif").exists()
    assert items["cog"]["properties"]["hsivar:datetime_is_processing_time"] is True

    # The Collection links every Item, covers their footprints and validates against the core schema pystac ships
    # (the eo / proj extension schemas are not available offline: validate() reports them as not checked).
    collection = json.loads((out / COLLECTION_NAME).read_text())
    assert validate(collection)[0]
    linked = {(out / link["href"]).resolve() for link in collection["links"] if link["rel"] == "item"}
    assert linked == {Path(rows[str(src)]["stac_item_uri"]).resolve() for src in good.values()}
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    for item in items.values():
        if item.get("bbox"):
            b = item["bbox"]
            assert west <= b[0] and south <= b[1] and east >= b[2] and north >= b[3]

    # The Collection is an input too: its items' data assets are restored again, under <output>/<item id>/.
    again = tmp_path / "again"
    report2 = run_batch(BatchOptions(input=str(out / COLLECTION_NAME), output=str(again), model=str(published_tiny),
                                     assets=["data"]))
    assert (report2.ok, report2.failed) == (5, 0), report2.failures
    for item in items.values():
        name = item["assets"]["data"]["href"].removeprefix("./")
        assert (again / item["id"] / name).is_file() and (again / item["id"] / f"{name}{ITEM_SUFFIX}").is_file()
    with pytest.raises(ValueError, match="has no asset 'nope'"):
        run_batch(BatchOptions(input=str(out / COLLECTION_NAME), output=str(tmp_path / "x"),
                               model=str(published_tiny), assets=["nope"]))
