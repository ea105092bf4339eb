"""STAC Items and Collection of batch outputs, offline validation, and STAC documents as inputs (no Ray)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pystac
import pytest
from hsivar_platform.batch.keys import list_stac_inputs
from hsivar_platform.batch.stac import (
    CollectionWriter,
    Provenance,
    StacInputError,
    item_uri,
    output_item,
    stac_assets,
    validate,
    write_item,
)
from rasterio.warp import transform as warp

from hsivar.io import CubeMeta

TRANSFORM = (30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)


def _meta(**extra: object) -> CubeMeta:
    return CubeMeta(bands=3, wavelengths=[450.0, 550.0, 650.0], fwhm=[10.0, 12.0, 14.0], band_names=["b", "g", "r"],
                    crs="EPSG:32633", transform=TRANSFORM, format="geotiff", **extra)


def _provenance() -> Provenance:
    return Provenance(input_uri="/in/a.tif", input_sha256="0" * 64, model="models:/hsivar/3", model_requested="m",
                      model_version="3", task="gaussian", task_weights={"gaussian": 0.75, "blur": 0.25}, samples=2,
                      seed=5)


def _write(tmp_path: Path, rel: str, meta: CubeMeta | None = None) -> str:
    out = str(tmp_path / rel)
    item = output_item(out, meta or _meta(), (3, 20, 10), _provenance(), item_id=rel.replace("/", "__"),
                       output_sha256="1" * 64, assets={"kept": out.replace(".tif", ".kept.tif")})
    return write_item(item, out, str(tmp_path))


def test_item_footprint_bands_projection_and_provenance(tmp_path: Path) -> None:
    uri = _write(tmp_path, "sub/a.tif")
    assert uri == item_uri(str(tmp_path / "sub/a.tif")) and uri.endswith("a.tif.stac.json")
    item = json.loads(Path(uri).read_text())
    assert validate(item)[0] == ["https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"]
    # the footprint is the 10 x 20 pixel raster's corners, in longitude / latitude
    xs, ys = warp("EPSG:32633", "EPSG:4326", [500000.0, 500300.0], [4000000.0, 3999400.0])
    assert item["bbox"] == pytest.approx([min(xs), min(ys), max(xs), max(ys)])
    assert item["geometry"]["type"] == "Polygon" and len(item["geometry"]["coordinates"][0]) == 5
    props = item["properties"]
    assert props["proj:code"] == "EPSG:32633" and props["proj:shape"] == [20, 10]
    assert props["proj:transform"] == list(TRANSFORM)
    assert props["hsivar:task_weights"] == {"gaussian": 0.75, "blur": 0.25} and props["hsivar:samples"] == 2
    assert props["hsivar:datetime_is_processing_time"] is True  # nothing says when the input was acquired
    bands = item["assets"]["data"]["eo:bands"]
    assert [b["name"] for b in bands] == ["b", "g", "r"]
    assert [b["center_wavelength"] for b in bands] == pytest.approx([0.45, 0.55, 0.65])
    assert [b["full_width_half_max"] for b in bands] == pytest.approx([0.010, 0.012, 0.014])
    assert item["assets"]["kept"]["href"] == "./a.kept.tif" and item["collection"] == f"hsivar-{tmp_path.name}"
    assert {"rel": "collection", "href": "../collection.json", "type": "application/json"} in item["links"]
    assert pystac.Item.from_dict(item).id == "sub__a.tif"


def test_item_of_a_swath_uses_its_ortho_grid_and_the_acquisition_time(tmp_path: Path) -> None:
    ortho = {"crs": "EPSG:4326", "transform": [0.001, 0.0, 10.0, 0.0, -0.001, 45.0], "glt_shape": [30, 40],
             "datetime": "2022-09-03T16:31:29Z"}
    meta = CubeMeta(bands=3, wavelengths=[450.0, 550.0, 650.0], format="emit", extras={"product": ortho})
    item = json.loads(Path(_write(tmp_path, "e.tif", meta)).read_text())
    assert item["bbox"] == pytest.approx([10.0, 44.97, 10.04, 45.0])
    assert item["properties"]["datetime"] == "2022-09-03T16:31:29Z"
    assert "proj:code" not in item["properties"] and "hsivar:datetime_is_processing_time" not in item["properties"]


def test_validation_uses_local_extension_schemas_and_never_downloads(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("validate() tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    item = json.loads(Path(_write(tmp_path, "a.tif")).read_text())
    checked, skipped = validate(item, schema_dir=tmp_path / "none")
    assert len(checked) == 1 and set(skipped) == set(item["stac_extensions"])
    older = {**item, "stac_version": "1.0.0"}  # pystac ships the 1.1.0 core schemas only: not checked, not fetched
    assert validate(older, schema_dir=tmp_path / "none") == (
        [], ["https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json", *item["stac_extensions"]])
    # a local copy of the projection schema (here a strict stand-in) is used, and a violation is reported
    ext = next(e for e in item["stac_extensions"] if "projection" in e)
    local = tmp_path / "schemas" / ext.split("://", 1)[1]
    local.parent.mkdir(parents=True)
    local.write_text(json.dumps({"$schema": "http://json-schema.org/draft-07/schema#", "$id": ext, "type": "object",
                                 "required": ["properties"], "properties": {"properties": {
                                     "type": "object", "required": ["proj:shape"],
                                     "properties": {"proj:shape": {"type": "array", "maxItems": 2}}}}}))
    checked, skipped = validate(item, schema_dir=tmp_path / "schemas")
    assert ext in checked and ext not in skipped
    item["properties"]["proj:shape"] = [1, 2, 3]
    with pytest.raises(pystac.errors.STACValidationError, match="proj:shape|too long"):
        validate(item, schema_dir=tmp_path / "schemas")


def test_collection_links_every_item_with_the_union_of_extents(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.tif")
    shifted = CubeMeta(**{**_meta().__dict__, "transform": (30.0, 0.0, 600000.0, 0.0, -30.0, 4100000.0),
                          "extras": {"product": {"datetime": "2021-01-02T03:04:05Z"}}})
    second = _write(tmp_path, "b/c.tif", shifted)
    writer = CollectionWriter(str(tmp_path))
    for uri in (first, second, first, str(tmp_path / "gone.tif.stac.json")):  # repeats and missing Items are fine
        writer.add(uri)
    assert len(writer) == 2
    collection = json.loads(Path(writer.write()).read_text())
    assert validate(collection)[0]
    items = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert items == ["./a.tif.stac.json", "./b/c.tif.stac.json"]
    boxes = [json.loads(Path(u).read_text())["bbox"] for u in (first, second)]
    assert collection["extent"]["spatial"]["bbox"][0] == pytest.approx(
        [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)])
    assert collection["extent"]["temporal"]["interval"][0][0] == "2021-01-02T03:04:05Z"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif.stac.json", "b", "collection.json"]


def _stac_item(item_id: str, **assets: dict) -> dict:
    return {"type": "Feature", "stac_version": "1.1.0", "id": item_id, "geometry": None, "properties": {
        "datetime": "2022-01-01T00:00:00Z"}, "links": [], "assets": assets}


def test_stac_documents_as_inputs(tmp_path: Path) -> None:
    (tmp_path / "items").mkdir()
    one = _stac_item("s1", cube={"href": "../data/s1.tif", "roles": ["data"]}, thumb={"href": "q.webp"})
    (tmp_path / "items" / "s1.json").write_text(json.dumps(one))
    collection = {"type": "Collection", "id": "c", "stac_version": "1.1.0", "description": "d", "license": "x",
                  "extent": {}, "links": [{"rel": "item", "href": "./items/s1.json"}, {"rel": "root", "href": "."}]}
    (tmp_path / "collection.json").write_text(json.dumps(collection))
    assets = stac_assets(str(tmp_path / "collection.json"))
    assert [(a.item_id, a.href) for a in assets] == [("s1", str(tmp_path / "data" / "s1.tif"))]

    features = {"type": "FeatureCollection", "features": [
        one, _stac_item("s2", cube={"href": "s3://bucket/s2.he5", "roles": ["data"]}, meta={"href": "x.xml"})]}
    (tmp_path / "found.json").write_text(json.dumps(features))
    inputs = list_stac_inputs(str(tmp_path / "found.json"), str(tmp_path / "out"), ["cube"])
    beside = str(tmp_path.parent / "data" / "s1.tif")  # relative hrefs resolve against the document holding them
    assert {i.uri: i.out for i in inputs} == {beside: str(tmp_path / "out/s1/s1.tif"),
                                              "s3://bucket/s2.he5": str(tmp_path / "out/s2/s2.he5")}
    inputs = list_stac_inputs(str(tmp_path / "items" / "s1.json"), str(tmp_path / "out"), ["cube", "thumb"])
    assert [(i.uri, i.skip_reason) for i in inputs] == [
        (str(tmp_path / "data" / "s1.tif"), ""), (str(tmp_path / "items" / "q.webp"), "not a cube file (unsupported "
                                                                                     "extension)")]

    with pytest.raises(StacInputError, match="has no asset 'thumb'"):
        list_stac_inputs(str(tmp_path / "found.json"), str(tmp_path / "out"), ["thumb"])
    (tmp_path / "bad.json").write_text(json.dumps({"type": "Catalogue"}))
    with pytest.raises(StacInputError, match="bad.json: not a STAC Item"):
        stac_assets(str(tmp_path / "bad.json"))
    (tmp_path / "noid.json").write_text(json.dumps(_stac_item("../up", cube={"href": "a.tif", "roles": ["data"]})))
    with pytest.raises(StacInputError, match="unusable id"):
        stac_assets(str(tmp_path / "noid.json"))
    with pytest.raises(FileNotFoundError, match="no such STAC document"):
        list_stac_inputs(str(tmp_path / "nope.json"), str(tmp_path / "out"))


def test_stac_inputs_resolve_remote_hrefs_and_refuse_what_cannot_work(tmp_path: Path) -> None:
    from hsivar_platform.batch.stac import _absolute

    assert _absolute("../raw/a.tif", "s3://bucket/cat/items/x.json") == "s3://bucket/cat/raw/a.tif"
    assert _absolute("/raw/a.tif", "s3://bucket/cat/x.json") == "s3://bucket/raw/a.tif"
    assert _absolute("s3://other/a.tif", "s3://bucket/x.json") == "s3://other/a.tif"
    assert _absolute("a%20b.tif", str(tmp_path / "x.json")) == str(tmp_path / "a b.tif")

    twice = _stac_item("s1", a={"href": "v/data.tif", "roles": ["data"]}, b={"href": "w/data.tif", "roles": ["data"]})
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    with pytest.raises(StacInputError, match="would both be restored to"):
        list_stac_inputs(str(tmp_path / "twice.json"), str(tmp_path / "out"))
    same = {"type": "FeatureCollection", "features": [_stac_item("s1", a={"href": "data.tif", "roles": ["data"]})] * 2}
    (tmp_path / "same.json").write_text(json.dumps(same))  # one item listed twice (e.g. two search pages): once
    assert [i.uri for i in list_stac_inputs(str(tmp_path / "same.json"), str(tmp_path / "out"))] == [
        str(tmp_path / "data.tif")]
    (tmp_path / "empty.json").write_text(json.dumps({"type": "Collection", "id": "c", "links": []}))
    with pytest.raises(StacInputError, match="empty.json: no item to restore"):
        stac_assets(str(tmp_path / "empty.json"))
    (tmp_path / "nohref.json").write_text(json.dumps(_stac_item("s1", a={"roles": ["data"]})))
    with pytest.raises(StacInputError, match="nohref.json: malformed STAC document"):
        stac_assets(str(tmp_path / "nohref.json"))
