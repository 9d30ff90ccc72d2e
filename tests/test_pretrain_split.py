"""The unlabelled `pretrain` split: pools of their own scenes (`gpicture synth --pretrain`),
converted without reading a label (`gpicture convert --split pretrain`): scrambling every
annotation of the raw data changes no array of the store; pre-training never reads a label
array, even of a labelled store; and it trains on the pretrain store and its teacher cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from typer.testing import CliRunner
from waymo_open_dataset import dataset_pb2

from gpicture.data.dataset import VoxelStoreDataset
from gpicture.data.store import StoreError, VoxelStore
from gpicture.data.waymo.tfrecord import iter_records, write_records
from gpicture.synth.generate import nuscenes_pretrain_names, nuscenes_scene_names, pretrain_stream, scene_seed
from gpicture.synth.simulate import waymo_context_name
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, build_teacher_store
from gpicture.training.engine import DistInfo, TrainConfig
from gpicture.training.pretrain import DGPLConfig, MaskConfig, run_pretrain
from gpicture.training.pretrain_data import PretrainDataset
from stages.cli import app

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
LABEL_ARRAYS = ("boxes", "points/seg", "occupancy")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """The repository's params with tiny pools in a temporary folder, and both pools written
    by `gpicture synth <dataset> --pretrain`."""
    root = tmp_path_factory.mktemp("pretrain-split")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"]["nuscenes"].update(frames=2, sweeps_before=1, occupancy=True)
    params["synth"]["waymo"].update(frames=1, label_every=1)
    for d in ("nuscenes", "waymo"):
        params["synth"]["pretrain"][d].update(out=str(root / f"raw-{d}-pretrain"), scenes=1)
        params["convert"][d]["splits"]["pretrain"]["root"] = str(root / f"raw-{d}-pretrain")
    params["convert"]["workers"] = 1
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    for d in ("nuscenes", "waymo"):
        res = runner.invoke(app, ["synth", d, "--pretrain", "--params", str(path)])
        assert res.exit_code == 0, res.output
    return {"root": root, "params": path}


def _convert(work: dict, dataset: str, raw: Path, out: Path, *extra: str):  # noqa: ANN202
    return runner.invoke(app, ["convert", dataset, "--split", "pretrain", "--root", str(raw), "--out", str(out),
                               "--params", str(work["params"]), *extra])


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a Zarr group, by its path."""
    g = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(a[:]) for name, a in g.members(max_depth=None) if isinstance(a, zarr.Array)}


def _assert_same_store(a: Path, b: Path, ignore: tuple[str, ...]) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert sorted(xa) == sorted(xb)
    for name in xa:
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)
    attrs_a, attrs_b = (dict(zarr.open_group(str(p), mode="r").attrs) for p in (a, b))
    for k in ("source_root", *ignore):
        attrs_a.pop(k), attrs_b.pop(k)
    assert attrs_a == attrs_b


def _assert_unlabelled(path: Path) -> None:
    store = VoxelStore.open(path)
    g = zarr.open_group(str(path), mode="r")
    assert not store.labelled and store.attrs["labels"] is False and store.attrs["n_boxes"] == 0
    assert not store.attrs["has_seg_labels"] and not store.attrs["has_occupancy"]
    for name in LABEL_ARRAYS:
        parent, _, leaf = name.rpartition("/")
        assert leaf not in (g[parent] if parent else g), f"{path}: label array {name}"
    fr = store[0]
    assert fr.boxes is None and fr.seg_labels is None and fr.occupancy is None and len(fr.points)


def test_pool_scenes_are_none_of_the_labelled_scenes() -> None:
    from nuscenes.utils.splits import create_splits_scenes

    sp = create_splits_scenes()
    pool = nuscenes_pretrain_names(8, nuscenes_scene_names(4, "v1.0-mini", 0.25))
    assert len(set(pool)) == 8 and set(pool) <= set(sp["train"])
    assert not set(pool) & (set(sp["mini_train"]) | set(sp["mini_val"]))
    assert not set(pool) & set(nuscenes_scene_names(40, "v1.0-trainval", 0.25))  # a labelled trainval set too
    assert pool == nuscenes_pretrain_names(8, [])  # whatever the labelled scenes are
    with pytest.raises(ValueError, match="do not fit"):
        nuscenes_pretrain_names(8, sp["train"])
    for d in ("nuscenes", "waymo"):  # own seed stream: no labelled scene's seed, no Waymo context of theirs
        pool_seeds = {scene_seed(0, pretrain_stream(d), k) for k in range(8)}
        assert not pool_seeds & {scene_seed(0, d, k) for k in range(100)}
    assert not ({waymo_context_name(scene_seed(0, pretrain_stream("waymo"), k)) for k in range(3)}
                & {waymo_context_name(scene_seed(0, "waymo", k)) for k in range(100)})


def _scramble_nuscenes(root: Path) -> None:
    """Every annotation of a nuScenes root garbled: boxes moved and resized, instances of other
    categories, lidarseg and occupancy files replaced by bytes of another length."""
    rng = np.random.default_rng(0)
    tables = root / "v1.0-trainval"
    anns = json.loads((tables / "sample_annotation.json").read_text())
    assert anns
    for a in anns:
        a["translation"] = rng.uniform(-50, 50, 3).tolist()
        a["size"] = rng.uniform(0.1, 9, 3).tolist()
        a["num_lidar_pts"] = int(rng.integers(0, 999))
    (tables / "sample_annotation.json").write_text(json.dumps(anns))
    cats = [c["token"] for c in json.loads((tables / "category.json").read_text())]
    inst = json.loads((tables / "instance.json").read_text())
    for i in inst:
        i["category_token"] = cats[int(rng.integers(len(cats)))]
    (tables / "instance.json").write_text(json.dumps(inst))
    garbled = [*(root / "lidarseg").rglob("*.bin"), *(root / "nuScenes-Occupancy").rglob("*.npy")]
    assert garbled
    for f in garbled:
        f.write_bytes(rng.integers(0, 256, f.stat().st_size // 3 + 7, dtype=np.uint8).tobytes())


def test_nuscenes_pretrain_split_reads_no_label(work) -> None:
    root = work["root"]
    raw, scrambled = root / "raw-nuscenes-pretrain", root / "nus-scrambled"
    tables = json.loads((raw / "v1.0-trainval" / "scene.json").read_text())
    assert [s["name"] for s in tables] == nuscenes_pretrain_names(1, [])
    shutil.copytree(raw, scrambled)
    _scramble_nuscenes(scrambled)
    res = _convert(work, "nuscenes", raw, root / "nus-a.zarr")  # the params' pretrain split: labels false
    assert res.exit_code == 0, res.output
    assert "boxes 0" in res.output
    res = _convert(work, "nuscenes", scrambled, root / "nus-b.zarr")
    assert res.exit_code == 0, res.output
    _assert_unlabelled(root / "nus-a.zarr")
    # the same store, array by array, and the same fingerprint (the annotation tables are not in it)
    _assert_same_store(root / "nus-a.zarr", root / "nus-b.zarr", ignore=())
    # the garbage is there to be found: reading the labels fails on it, and the clean root has labels
    res = _convert(work, "nuscenes", scrambled, root / "nus-c.zarr", "--labels")
    assert res.exit_code == 2 and "lidarseg labels for" in res.output
    res = _convert(work, "nuscenes", raw, root / "nus-labelled.zarr", "--labels")
    assert res.exit_code == 0, res.output
    labelled = VoxelStore.open(root / "nus-labelled.zarr")
    assert labelled.labelled and labelled.attrs["n_boxes"] > 0 and labelled.attrs["has_occupancy"]


def _scramble_waymo(segment: Path) -> None:
    """Every laser label of a Waymo segment moved, every segmentation label image garbage."""
    rng = np.random.default_rng(0)
    records = []
    n_seg = 0
    for data in iter_records(segment):
        frame = dataset_pb2.Frame()
        frame.ParseFromString(data)
        assert len(frame.laser_labels)
        for label in frame.laser_labels:
            label.box.center_x, label.box.length = rng.uniform(-50, 50), rng.uniform(0.1, 9)
            label.num_lidar_points_in_box = int(rng.integers(0, 999))
        for laser in frame.lasers:
            for ri in (laser.ri_return1, laser.ri_return2):
                if ri.segmentation_label_compressed:
                    ri.segmentation_label_compressed = rng.integers(0, 256, 99, dtype=np.uint8).tobytes()
                    n_seg += 1
        records.append(frame.SerializeToString())
    assert n_seg
    write_records(segment, records)


def test_waymo_pretrain_split_reads_no_label(work) -> None:
    root = work["root"]
    raw, scrambled = root / "raw-waymo-pretrain", root / "waymo-scrambled"
    shutil.copytree(raw, scrambled)
    (segment,) = (scrambled / "training").glob("segment-*.tfrecord")
    _scramble_waymo(segment)
    for src, out in ((raw, "waymo-a.zarr"), (scrambled, "waymo-b.zarr")):
        res = _convert(work, "waymo", src, root / out)
        assert res.exit_code == 0, res.output
    _assert_unlabelled(root / "waymo-a.zarr")
    # the labels are inside the segment's records: its bytes (the fingerprint) differ, no array does
    _assert_same_store(root / "waymo-a.zarr", root / "waymo-b.zarr", ignore=("source_fingerprint",))
    res = _convert(work, "waymo", scrambled, root / "waymo-c.zarr", "--labels")
    assert res.exit_code == 2 and "cannot decode" in res.output


def _corrupt_label_chunks(store: Path) -> int:
    """Overwrite every chunk of the store's label arrays with garbage; the chunks corrupted."""
    chunks = [f for name in LABEL_ARRAYS for f in (store / name).rglob("*")
              if f.is_file() and f.name != "zarr.json" and "/c/" in f.as_posix()]
    for f in chunks:
        f.write_bytes(b"not a blosc chunk" * 8)
    return len(chunks)


TINY = {**yaml.safe_load((REPO / "params.yaml").read_text())["model"]["profiles"]["small"]["nuscenes"],
        "d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "nhead": 4, "set_size": 24}


def test_pretraining_reads_no_label_array_and_trains_on_the_pretrain_store(work, tmp_path) -> None:
    root = work["root"]
    if not (root / "nus-a.zarr").exists():  # run alone: the stores of the test above
        test_nuscenes_pretrain_split_reads_no_label(work)
    unlabelled, labelled = root / "nus-a.zarr", root / "nus-labelled.zarr"
    teacher = SealTeacher.from_checkpoint(None)
    cfg = TeacherConfig(input_scale=1 / 255)
    build_teacher_store(unlabelled, tmp_path / "t-unlabelled.zarr", teacher, cfg)
    build_teacher_store(labelled, tmp_path / "t-labelled.zarr", teacher, cfg)
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "t-unlabelled.zarr"), mode="r")["features"][:],
                                  zarr.open_group(str(tmp_path / "t-labelled.zarr"), mode="r")["features"][:])
    # a labelled store whose every label chunk is garbage pre-trains exactly as the intact one
    broken = tmp_path / "broken.zarr"
    shutil.copytree(labelled, broken)
    assert _corrupt_label_chunks(broken) >= 3
    with pytest.raises(StoreError, match="damaged"):
        VoxelStore.open(broken)[0]  # reading its labels fails, naming the chunk: they are garbage
    ref, ref_feats, _ = PretrainDataset(labelled, tmp_path / "t-labelled.zarr")[1]
    for store, tstore in ((labelled, "t-labelled.zarr"), (broken, "t-labelled.zarr"),
                          (unlabelled, "t-unlabelled.zarr")):
        fr, feats, _ = PretrainDataset(store, tmp_path / tstore)[1]
        assert fr.boxes is None and fr.seg_labels is None and fr.occupancy is None
        np.testing.assert_array_equal(fr.points, ref.points)
        np.testing.assert_array_equal(fr.voxel_coords, ref.voxel_coords)
        np.testing.assert_array_equal(feats, ref_feats)
    # the supervised tasks refuse the unlabelled store
    with pytest.raises(StoreError, match="unlabelled store"):
        VoxelStoreDataset(unlabelled)
    with pytest.raises(StoreError, match="unlabelled store"):
        VoxelStore.open(unlabelled).frame_boxes(0)
    # one pre-training epoch on the pretrain store and its teacher cache
    metrics = run_pretrain(TINY, unlabelled, tmp_path / "t-unlabelled.zarr", tmp_path / "run",
                           TrainConfig(epochs=1, batch_size=2, lr=0.003, weight_decay=0.05), (0.97,) * 8,
                           MaskConfig(), DGPLConfig(probe_frames=2), DistInfo(), true_points=32, progress=False)
    assert np.isfinite(metrics["loss"]) and (tmp_path / "run" / "student.pt").exists()
    assert torch.load(tmp_path / "run" / "student.pt", weights_only=False)["format"] == "gpicture-student"
