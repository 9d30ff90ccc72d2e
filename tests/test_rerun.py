"""`gpicture show --rerun FILE.rrd`: a split as one Rerun recording, read back with the SDK
(rerun.chunk.RrdReader) and checked entity by entity against the store: the frames on both
timelines, the points of every colouring, the boxes, the occupancy voxels and the range image;
and the refusals (bad path, bad predictions, no rerun-sdk), which leave nothing behind."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.occupancy_targets import OccupancyGridSpec, frame_ground_truth
from gpicture.data.spec import NUSCENES
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.eval.nuscenes_submission import (
    lidar_boxes_to_submission,
    write_submission,
)
from gpicture.eval.occupancy import write_prediction_folder
from gpicture.eval.predictions import DetectionPrediction
from gpicture.params import load_section
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, build_teacher_store
from gpicture.training.pretrain import MaskConfig
from gpicture.viz import inputs, range_view
from gpicture.viz import palette as pal
from stages.cli import app

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params.yaml"
NUS_FRAMES, WAY_FRAMES = 2, 2
OCC_GRID = OccupancyGridSpec((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.8, 0.8, 0.8))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rerun")
    generate_nuscenes(SynthConfig(scenes=1, frames=NUS_FRAMES, sweeps_before=0, seed=8, occupancy=True,
                                  val_fraction=0.0), root / "raw" / "nuscenes")
    generate_waymo(SynthConfig(scenes=1, frames=WAY_FRAMES, seed=3, val_fraction=0.0, waymo_label_every=1),
                   root / "raw" / "waymo")
    nus = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    way = VoxelGrid((-74.88, -74.88, -2.0, 74.88, 74.88, 4.0), (0.64, 0.64, 0.375))
    convert(ConvertConfig("nuscenes", root / "raw" / "nuscenes", "mini_train", nus, sweeps=1), root / "nus.zarr")
    convert(ConvertConfig("waymo", root / "raw" / "waymo", "training", way), root / "way.zarr")
    build_teacher_store(root / "nus.zarr", root / "nus_t.zarr", SealTeacher.from_checkpoint(None),
                        TeacherConfig(input_scale=1 / 255, batch_frames=2))
    store = VoxelStore.open(root / "nus.zarr")
    cmap = NUSCENES.detection_class_map()
    preds, occ = [], {}
    for i in range(len(store)):
        fr = store[i]
        det = np.array([cmap.get(str(n)) for n in fr.box_names], dtype=object)
        keep = det != None
        k = int(keep.sum())
        scores = np.where(np.arange(k) % 3 == 0, 0.1, 0.9)  # every third below the 0.3 threshold
        preds.append(DetectionPrediction(fr.frame_id, i, np.asarray(fr.boxes, np.float64)[keep], scores, det[keep],
                                         np.zeros((k, 2))))
        truth = frame_ground_truth(fr, NUSCENES, OCC_GRID).astype(np.int64)
        occ[fr.frame_id] = np.column_stack([truth[:, :3], np.clip(truth[:, 3], 1, 16)])[::2]  # half the voxels
    write_submission(lidar_boxes_to_submission(preds, store.pose), root / "det.json")
    write_submission(lidar_boxes_to_submission(preds[:1], store.pose), root / "det_one.json")  # no entry for frame 1
    write_prediction_folder(root / "occ", NUSCENES, OCC_GRID, [f"c{i}" for i in range(16)], occ,
                            {fid: f"f{k}" for k, fid in enumerate(occ)})
    return {"root": root, "nus": root / "nus.zarr", "way": root / "way.zarr", "nus_t": root / "nus_t.zarr",
            "det": root / "det.json", "det_one": root / "det_one.json", "occ": root / "occ", "preds": preds}


def _show(*args: object) -> object:
    return CliRunner().invoke(app, ["show", *map(str, args), "--params", str(PARAMS)])


def read_recording(path: Path) -> tuple[dict, dict, list]:
    """(entity -> frame index -> {component: Arrow array of its instances}, entity -> static
    components, the blueprint stores) of the one recording in ``path``, through the SDK's RRD
    reader; ``rows["timestamps"]``: frame index -> timestamp (ns)."""
    from rerun.chunk import RrdReader  # installed from the lock: a missing SDK fails, never skips

    reader = RrdReader(path)
    assert len(reader.recordings()) == 1
    rows: dict[str, dict[int, dict]] = defaultdict(dict)
    static: dict[str, set[str]] = defaultdict(set)
    times: dict[int, int] = {}
    for chunk in reader.stream().to_chunks():
        batch = chunk.to_record_batch()
        names = [n for n in batch.schema.names if ":" in n and not n.startswith("rerun.")]
        if chunk.is_static:
            static[chunk.entity_path] |= set(names)
            continue
        frames = batch.column("frame").to_pylist()
        stamps = batch.column("timestamp").cast("int64").to_pylist()
        for r, f in enumerate(frames):  # one row per logged frame
            times[f] = stamps[r]
            rows[chunk.entity_path].setdefault(f, {}).update({n: batch.column(n)[r].values for n in names})
    rows["timestamps"] = times
    return rows, static, reader.blueprints()


def _n(rows: dict, entity: str, component: str) -> list[int]:
    """Instances of ``component`` of ``entity`` in each frame, in frame order."""
    return [0 if (v := rows[entity][f][component]) is None else len(v) for f in sorted(rows[entity])]


def _np(values) -> np.ndarray | list:
    """An Arrow array of instances as numpy ((K, n) for fixed-size lists); strings and structs as lists."""
    if pa.types.is_fixed_size_list(values.type):
        return np.asarray(values.flatten()).reshape(len(values), values.type.list_size)
    if pa.types.is_string(values.type) or pa.types.is_struct(values.type) or pa.types.is_list(values.type):
        return values.to_pylist()
    return values.to_numpy(zero_copy_only=False)


def test_nuscenes_split_recording_holds_every_frame_colouring_box_and_voxel(world, tmp_path) -> None:
    out = tmp_path / "rec" / "nus.rrd"
    res = _show(world["nus"], "--rerun", out, "--teacher", world["nus_t"], "--predictions", world["det"])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}: {NUS_FRAMES} frame(s)" in res.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["nus.rrd"]  # no temporary, no lock left
    rows, static, blueprints = read_recording(out)
    assert len(blueprints) == 1  # the default layout travels with the recording
    store = VoxelStore.open(world["nus"])
    frames = [store[i] for i in range(len(store))]

    # Both timelines: the frame index and the frame's own timestamp (ns).
    assert sorted(rows["timestamps"]) == list(range(NUS_FRAMES))
    assert [rows["timestamps"][i] for i in range(NUS_FRAMES)] == [fr.timestamp_us * 1000 for fr in frames]
    for e in ("/world/points/intensity", "/world/points/label", "/world/points/i2mask", "/world/points/teacher_pca",
              "/world/points/i2mask_visible", "/world/boxes/ground_truth", "/world/boxes/predicted",
              "/world/occupancy/truth", "/frame"):
        assert sorted(rows[e]) == list(range(NUS_FRAMES)), e
    assert "/range/range" not in rows and "/world/occupancy/predicted" not in rows  # not Waymo; no occupancy prediction

    # Points: every colouring holds every point of the frame, at its position.
    n_points = [len(fr.points) for fr in frames]
    assert min(n_points) > 1000
    for e in ("intensity", "label", "i2mask", "teacher_pca"):
        assert _n(rows, f"/world/points/{e}", "Points3D:positions") == n_points, e
    np.testing.assert_allclose(_np(rows["/world/points/intensity"][1]["Points3D:positions"]), frames[1].points, atol=1e-6)
    assert _n(rows, "/world/points/intensity", "Points3D:colors") == n_points
    assert _n(rows, "/world/points/teacher_pca", "Points3D:colors") == n_points
    palette = pal.semantic_palette("nuscenes", store.attrs)
    ids = palette.lut[frames[0].seg_labels.astype(np.int64)]
    np.testing.assert_array_equal(_np(rows["/world/points/label"][0]["Points3D:class_ids"]), np.where(ids >= 0, ids, 255))
    assert "AnnotationContext:context" in static["/world/points/label"]
    assert "AnnotationContext:context" in static["/world/points/i2mask"]

    # I²Mask: the cluster of each point's voxel; the visible entity holds the points of unmasked
    # voxels (frame 0 recomputed here: k-means is the slow part).
    pre = load_section(PARAMS, "pretrain")  # the stage's defaults: pretrain.mask, pretrain.seed
    mk = pre["mask"]
    m = MaskConfig(int(mk["n_clusters"]), tuple(mk["n_partition"]), float(mk["lambda_threshold"]), tuple(mk["base_ratio"]))
    for i, fr in enumerate(frames[:1]):
        feats, valid = inputs.open_teacher(world["nus_t"], store).frame(i)
        fm = inputs.frame_mask(feats, valid, i, m, seed=int(pre.get("seed", 0)))
        pv = fr.point_voxel.astype(np.int64)
        want = np.where(pv >= 0, np.where(fm.cluster >= 0, fm.cluster, 255)[np.maximum(pv, 0)], 255)
        np.testing.assert_array_equal(_np(rows["/world/points/i2mask"][i]["Points3D:class_ids"]), want)
        seen = (pv >= 0) & ~fm.mask[np.maximum(pv, 0)]
        assert 0 < seen.sum() < len(pv)
        assert len(rows["/world/points/i2mask_visible"][i]["Points3D:positions"]) == int(seen.sum())
    visible = _n(rows, "/world/points/i2mask_visible", "Points3D:positions")
    assert all(0 < v < n for v, n in zip(visible, n_points, strict=True))

    # Boxes: every ground-truth box with its class; the predictions scoring >= 0.3 with "class score".
    assert _n(rows, "/world/boxes/ground_truth", "Boxes3D:half_sizes") == [len(fr.boxes) for fr in frames]
    gt = {k: _np(v) for k, v in rows["/world/boxes/ground_truth"][0].items()}
    np.testing.assert_allclose(gt["Boxes3D:centers"], frames[0].boxes[:, :3], atol=1e-5)
    np.testing.assert_allclose(np.asarray(gt["Boxes3D:half_sizes"]) * 2, frames[0].boxes[:, 3:6], atol=1e-5)
    q = np.asarray(gt["Boxes3D:quaternions"])
    np.testing.assert_allclose(np.cos(2 * np.arctan2(q[:, 2], q[:, 3]) - frames[0].boxes[:, 6]), 1.0, atol=1e-5)
    assert gt["Boxes3D:labels"] == [str(n) for n in frames[0].box_names]
    kept = [int((p.scores >= 0.3).sum()) for p in world["preds"]]
    assert _n(rows, "/world/boxes/predicted", "Boxes3D:half_sizes") == kept
    assert all(0 < k < len(p.scores) for k, p in zip(kept, world["preds"], strict=True))  # the threshold bites
    assert all(lab.endswith(" 0.90") for lab in _np(rows["/world/boxes/predicted"][0]["Boxes3D:labels"]))

    # Occupancy: one solid box per nuScenes-Occupancy row of the frame, class id = its label.
    occ = [np.asarray(fr.occupancy) for fr in frames]
    assert min(len(o) for o in occ) > 100
    assert _n(rows, "/world/occupancy/truth", "Boxes3D:centers") == [len(o) for o in occ]
    np.testing.assert_array_equal(_np(rows["/world/occupancy/truth"][0]["Boxes3D:class_ids"]), occ[0][:, 3])
    assert frames[0].frame_id in _np(rows["/frame"][0]["TextDocument:text"])[0]


def test_occupancy_predictions_are_recorded_beside_the_truth_on_their_grid(world, tmp_path) -> None:
    out = tmp_path / "occ.rrd"
    res = _show(world["nus"], "--rerun", out, "--predictions", world["occ"])
    assert res.exit_code == 0, res.output
    rows, _, _ = read_recording(out)
    store = VoxelStore.open(world["nus"])
    truth = [frame_ground_truth(store[i], NUSCENES, OCC_GRID) for i in range(len(store))]
    assert _n(rows, "/world/occupancy/truth", "Boxes3D:centers") == [len(t) for t in truth]
    assert _n(rows, "/world/occupancy/predicted", "Boxes3D:centers") == [(len(t) + 1) // 2 for t in truth]
    np.testing.assert_allclose(_np(rows["/world/occupancy/predicted"][0]["Boxes3D:half_sizes"])[0], [0.4, 0.4, 0.4])
    assert "/world/points/i2mask" not in rows and "/world/boxes/predicted" not in rows  # no teacher, no detections


def test_waymo_recording_has_the_range_images_of_every_frame(world, tmp_path) -> None:
    out = tmp_path / "way.rrd"
    res = _show(world["way"], "--rerun", out)
    assert res.exit_code == 0, res.output
    rows, static, _ = read_recording(out)
    store = VoxelStore.open(world["way"])
    frames = [store[i] for i in range(len(store))]
    assert sorted(rows["timestamps"]) == list(range(WAY_FRAMES))
    assert _n(rows, "/world/points/label", "Points3D:positions") == [len(fr.points) for fr in frames]
    assert _n(rows, "/world/boxes/ground_truth", "Boxes3D:half_sizes") == [len(fr.boxes) for fr in frames]
    assert min(_n(rows, "/world/occupancy/truth", "Boxes3D:centers")) > 100  # from the labelled points
    for i, fr in enumerate(frames):
        ri = range_view.range_image(fr)
        for e, comp in (("range", "DepthImage"), ("intensity", "Image"), ("label", "SegmentationImage")):
            fmt = _np(rows[f"/range/{e}"][i][f"{comp}:format"])[0]
            assert (fmt["width"], fmt["height"]) == (range_view.WIDTH, range_view.HEIGHT), e
        depth = np.frombuffer(bytes(_np(rows["/range/range"][i]["DepthImage:buffer"])[0]), np.float32)
        np.testing.assert_allclose(depth.reshape(ri.range.shape), np.nan_to_num(ri.range, nan=0.0), rtol=1e-6)
        assert np.isfinite(ri.range).sum() > 1000
    assert "AnnotationContext:context" in static["/range/label"]


def test_refusals_leave_nothing_and_keep_an_earlier_recording(world, tmp_path, monkeypatch) -> None:
    res = _show(world["nus"], "--rerun", tmp_path / "nus.png")
    assert res.exit_code == 2 and "nus.png: --rerun must name a .rrd file" in res.output
    (tmp_path / "dir.rrd").mkdir()
    res = _show(world["nus"], "--rerun", tmp_path / "dir.rrd")
    assert res.exit_code == 2 and "dir.rrd: exists and is not a file" in res.output.replace("\n", "")
    (tmp_path / "dir.rrd").rmdir()
    res = _show(world["nus"], "--rerun", tmp_path / "a.rrd", "--out", tmp_path / "a.png")
    assert res.exit_code == 2 and "--rerun records every view" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"not-a-frame": []}}))
    res = _show(world["nus"], "--rerun", tmp_path / "a.rrd", "--predictions", bad)
    assert res.exit_code == 2 and f"{bad}: predictions for 1 frame(s) that are not in" in res.output.replace("\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]

    # A failure after a frame was logged (no submission entry for frame 1): the temporary
    # recording is removed and the earlier one is untouched.
    old = tmp_path / "old.rrd"
    old.write_bytes(b"earlier recording")
    res = _show(world["nus"], "--rerun", old, "--predictions", world["det_one"])
    assert res.exit_code == 2 and "no entry for frame" in res.output.replace("\n", "")
    assert old.read_bytes() == b"earlier recording"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "old.rrd"]

    monkeypatch.setitem(sys.modules, "rerun", None)  # as if rerun-sdk were not installed
    res = _show(world["nus"], "--rerun", tmp_path / "b.rrd")
    assert res.exit_code == 2 and "needs rerun-sdk, which is not installed" in res.output.replace("\n", "")
    assert not (tmp_path / "b.rrd").exists()
