"""Stores prove they are whole (issue 30): every chunk written and recorded, a CRC32C on every
chunk; a deleted or damaged chunk of a voxel or teacher store is one error naming the store,
the array, the chunk and what to do, in the library, in `gpicture verify` and in the commands
that read stores (`teacher`, `show`, `pretrain`); an old store without the record still opens,
with a warning."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
from typer.testing import CliRunner

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.store import StoreError, VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.synth.generate import SynthConfig, generate_nuscenes
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, TeacherStore, build_teacher_store
from stages.cli import app

runner = CliRunner()
PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")
GRID = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
# (store kind, array, chunk key) of the fault each test makes
POINTS = ("voxel", "points/xyz", "c/0/0")
FEATURES = ("teacher", "features", "c/0/0")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A small voxel store of synthetic nuScenes and its teacher store (a seeded random teacher)."""
    root = tmp_path_factory.mktemp("integrity")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=5, occupancy=False, workers=2), root / "raw")
    convert(ConvertConfig("nuscenes", root / "raw", "mini_train", GRID, sweeps=2), root / "s.zarr")
    build_teacher_store(root / "s.zarr", root / "t.zarr", SealTeacher.from_checkpoint(None),
                        TeacherConfig(input_scale=1 / 255, keyframe_only=False))
    return {"voxel": root / "s.zarr", "teacher": root / "t.zarr"}


def _copies(stores: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Fresh copies of both stores (a teacher store is checked against its source's fingerprint,
    which does not depend on the source's path)."""
    return {k: Path(shutil.copytree(p, tmp_path / p.name)) for k, p in stores.items()}


def _delete(paths: dict[str, Path], fault: tuple[str, str, str]) -> Path:
    kind, array, key = fault
    chunk = paths[kind] / array / key
    chunk.unlink()
    return chunk


def _randomize(paths: dict[str, Path], fault: tuple[str, str, str]) -> Path:
    """Overwrite the chunk with as many random bytes (a bad disk, a bad copy)."""
    kind, array, key = fault
    chunk = paths[kind] / array / key
    chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    return chunk


def _named(result, store: Path, array: str, key: str) -> None:  # noqa: ANN001
    """Exit 2 and one `error:` line naming the store, the array, the chunk and a remedy; no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in result.output, result.output
    line = " ".join(result.output.split())  # rich may wrap long lines
    assert f"{store}: array {array}, chunk {key}" in line, line
    assert "dvc pull" in line, line


# ---------------------------------------------------------------------------------------------
# What a writer records; what the library refuses
# ---------------------------------------------------------------------------------------------


def test_every_chunk_is_a_checksummed_file_the_store_records(stores) -> None:
    for path in stores.values():
        rec = json.loads((path / "zarr.json").read_text())["attributes"]["integrity"]
        assert rec["checksum"] == "crc32c" and rec["arrays"]
        for name, a in rec["arrays"].items():
            meta = json.loads((path / name / "zarr.json").read_text())
            assert meta["shape"] == a["shape"] and [c["name"] for c in meta["codecs"]][-2:] == ["blosc", "crc32c"]
            files = [p for p in (path / name / "c").rglob("*") if p.is_file()] if a["chunks"] else []
            assert len(files) == a["chunks"] == -(-a["shape"][0] // a["chunk_shape"][0]), name
    # a chunk of nothing but the fill value is a file too (Zarr skips those by default): nuScenes
    # has no detection difficulty, so boxes/difficulty is all zeros
    store = stores["voxel"]
    assert not np.asarray(VoxelStore.open(store)._g["boxes/difficulty"][:]).any()
    assert (store / "boxes" / "difficulty" / "c" / "0").is_file()


@pytest.mark.parametrize("fault", [POINTS, FEATURES, ("voxel", "frames/point_ptr", "c/0")])
def test_a_deleted_chunk_is_refused_on_open(stores, tmp_path, fault) -> None:
    paths = _copies(stores, tmp_path)
    _delete(paths, fault)
    kind, array, key = fault
    with pytest.raises(StoreError, match=rf"^{paths[kind]}: array {array}, chunk {key}: missing .*dvc pull"):
        VoxelStore.open(paths["voxel"]) if kind == "voxel" else TeacherStore.open(paths["teacher"])


def test_a_deleted_array_is_refused_on_open(stores, tmp_path) -> None:
    paths = _copies(stores, tmp_path)
    shutil.rmtree(paths["voxel"] / "points" / "voxel")
    with pytest.raises(StoreError, match=rf"^{paths['voxel']}: array points/voxel is missing"):
        VoxelStore.open(paths["voxel"])


@pytest.mark.parametrize("fault", [POINTS, FEATURES])
def test_a_damaged_chunk_is_named_when_read(stores, tmp_path, fault) -> None:
    paths = _copies(stores, tmp_path)
    _randomize(paths, fault)
    kind, array, key = fault
    store = VoxelStore.open(paths["voxel"])
    want = rf"^{paths[kind]}: array {array}, chunk {key}: damaged \(its CRC32C checksum does not match"
    with pytest.raises(StoreError, match=want):
        store[0] if kind == "voxel" else TeacherStore.open(paths["teacher"], store).frame(0)


def test_a_chunk_with_a_good_checksum_that_blosc_cannot_decode_is_named(stores, tmp_path) -> None:
    paths = _copies(stores, tmp_path)
    chunk = paths["voxel"] / "points" / "xyz" / "c" / "0" / "0"
    body = np.random.default_rng(1).bytes(chunk.stat().st_size - 4)
    chunk.write_bytes(body + google_crc32c.value(body).to_bytes(4, "little"))  # as Zarr's codec appends it
    with pytest.raises(StoreError, match=r"array points/xyz, chunk c/0/0: damaged \(Blosc cannot decode it"):
        VoxelStore.open(paths["voxel"])[0]


def test_an_old_store_without_the_record_opens_with_a_warning(stores, tmp_path, caplog) -> None:
    paths = _copies(stores, tmp_path)
    meta_path = paths["voxel"] / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["integrity"]
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        store = VoxelStore.open(paths["voxel"])
    assert "does not record its chunks" in caplog.text and str(paths["voxel"]) in caplog.text
    ok = VoxelStore.open(stores["voxel"])[0]
    np.testing.assert_array_equal(store[0].points, ok.points)
    r = runner.invoke(app, ["verify", str(paths["voxel"])])
    assert r.exit_code == 0 and "warning: an old store" in " ".join(r.output.split()), r.output


# ---------------------------------------------------------------------------------------------
# gpicture verify
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["voxel", "teacher"])
def test_verify_an_intact_store(stores, kind) -> None:
    r = runner.invoke(app, ["verify", str(stores[kind])])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    n = len(json.loads((stores[kind] / "zarr.json").read_text())["attributes"]["integrity"]["arrays"])
    assert f"a {kind} store" in text and f"{n} arrays" in text and "CRC32C checksums matched" in text, text
    assert "whole" in text and ("voxels" in text), text


@pytest.mark.parametrize("fault", [POINTS, FEATURES])
@pytest.mark.parametrize("damage", [_delete, _randomize])
def test_verify_names_a_deleted_or_damaged_chunk(stores, tmp_path, fault, damage) -> None:
    paths = _copies(stores, tmp_path)
    damage(paths, fault)
    kind, array, key = fault
    r = runner.invoke(app, ["verify", str(paths[kind])])
    _named(r, paths[kind], array, key)
    assert ("missing" if damage is _delete else "damaged") in r.output


def test_verify_finds_rows_that_disagree_with_the_pointers(stores, tmp_path) -> None:
    """Metadata edited consistently with the record (a hand-made store): the counts still disagree."""
    paths = _copies(stores, tmp_path)
    meta_path = paths["voxel"] / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["n_points"] += 1
    meta_path.write_text(json.dumps(meta))
    r = runner.invoke(app, ["verify", str(paths["voxel"])])
    assert r.exit_code == 2 and "attribute n_points" in r.output, r.output


def test_verify_refuses_what_is_not_a_store(tmp_path) -> None:
    r = runner.invoke(app, ["verify", str(tmp_path)])
    assert r.exit_code == 2 and "not a voxel or teacher store" in r.output, r.output


# ---------------------------------------------------------------------------------------------
# The commands that read stores (each exited 0 on a deleted chunk before)
# ---------------------------------------------------------------------------------------------


def test_teacher_refuses_a_source_with_a_deleted_chunk(stores, tmp_path) -> None:
    paths = _copies(stores, tmp_path)
    _delete(paths, POINTS)
    out = tmp_path / "new_t.zarr"
    r = runner.invoke(app, ["teacher", "--store", str(paths["voxel"]), "--out", str(out), "--init", "random",
                            "--params", PARAMS])
    _named(r, paths["voxel"], *POINTS[1:])
    assert not [p for p in tmp_path.iterdir() if out.name in p.name]  # no store, no .partial


def test_teacher_on_a_damaged_source_leaves_no_partial(stores, tmp_path) -> None:
    paths = _copies(stores, tmp_path)
    _randomize(paths, POINTS)
    out = tmp_path / "new_t.zarr"
    r = runner.invoke(app, ["teacher", "--store", str(paths["voxel"]), "--out", str(out), "--init", "random",
                            "--params", PARAMS])
    _named(r, paths["voxel"], *POINTS[1:])
    assert not [p for p in tmp_path.iterdir() if out.name in p.name]  # no store, no .partial to resume


def test_show_refuses_a_store_with_a_deleted_chunk(stores, tmp_path) -> None:
    paths = _copies(stores, tmp_path)
    _delete(paths, POINTS)
    png = tmp_path / "f.png"
    r = runner.invoke(app, ["show", str(paths["voxel"]), "--frame", "0", "--view", "bev", "--out", str(png),
                            "--params", PARAMS])
    _named(r, paths["voxel"], *POINTS[1:])
    assert not png.exists()


@pytest.mark.parametrize("fault", [POINTS, FEATURES])
def test_pretrain_refuses_stores_with_a_deleted_chunk(stores, tmp_path, fault) -> None:
    paths = _copies(stores, tmp_path)
    _delete(paths, fault)
    out = tmp_path / "run"
    r = runner.invoke(app, ["pretrain", "--dataset", "nuscenes", "--store", str(paths["voxel"]), "--teacher",
                            str(paths["teacher"]), "--out", str(out), "--epochs", "1", "--procs", "1",
                            "--params", PARAMS])
    _named(r, paths[fault[0]], *fault[1:])
    assert not (out / "student.pt").exists()

