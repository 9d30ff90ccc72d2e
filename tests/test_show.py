"""`gpicture show` and gpicture.viz: every view of a synthetic frame, checked pixel by pixel where
the geometry is known (box outlines, labelled points, voxel columns), the study and curve figures,
and the refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from gpicture.data.batch import VoxelBatch
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
from gpicture.models.pretrain import PretrainBatch
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, build_teacher_store
from gpicture.training.pretrain import MaskConfig, masks_for_batch
from gpicture.viz import inputs, range_view
from gpicture.viz import palette as pal
from gpicture.viz.draw import box_corners
from gpicture.viz.raster import column_top
from gpicture.viz.render import ShowConfig, Sources, render_frame, show
from gpicture.viz.views import StoreGrid, occupancy_columns, pca_rgb
from stages.cli import app

REPO = Path(__file__).resolve().parent.parent
SIZE = 600
SHIFT = 3.0  # m: predicted boxes = ground truth moved along +x


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("show")
    generate_nuscenes(SynthConfig(scenes=1, frames=2, sweeps_before=0, seed=8, occupancy=True, val_fraction=0.0),
                      root / "raw" / "nuscenes")
    generate_waymo(SynthConfig(scenes=1, frames=1, seed=3, val_fraction=0.0, waymo_label_every=1), root / "raw" / "waymo")
    nus = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    way = VoxelGrid((-74.88, -74.88, -2.0, 74.88, 74.88, 4.0), (0.64, 0.64, 0.375))
    convert(ConvertConfig("nuscenes", root / "raw" / "nuscenes", "mini_train", nus, sweeps=1), root / "nus.zarr")
    convert(ConvertConfig("waymo", root / "raw" / "waymo", "training", way), root / "way.zarr")
    cfg = TeacherConfig(input_scale=1 / 255, batch_frames=2)
    build_teacher_store(root / "nus.zarr", root / "nus_teacher.zarr", SealTeacher.from_checkpoint(None), cfg)
    build_teacher_store(root / "way.zarr", root / "way_teacher.zarr", SealTeacher.from_checkpoint(None),
                        TeacherConfig(batch_frames=1))
    store = VoxelStore.open(root / "nus.zarr")
    frames = []
    cmap = NUSCENES.detection_class_map()
    for i in range(len(store)):
        boxes, names, _, _ = store.frame_boxes(i)
        det = np.array([cmap.get(str(n)) for n in names], dtype=object)
        keep = det != None
        moved = np.asarray(boxes, np.float64)[keep].copy()
        moved[:, 0] += SHIFT
        k = int(keep.sum())
        frames.append(DetectionPrediction(store.frame_ids[i], i, moved, np.full(k, 0.9), det[keep], np.zeros((k, 2))))
    write_submission(lidar_boxes_to_submission(frames, store.pose), root / "det.json")
    return {"root": root, "nus": root / "nus.zarr", "way": root / "way.zarr", "nus_t": root / "nus_teacher.zarr",
            "way_t": root / "way_teacher.zarr", "det": root / "det.json"}


def _rgb(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return img[rows, cols, :3].astype(np.float64) / 255.0


def _interior(panel, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pixels at least 2 px inside the panel: the axes frame is drawn over the outermost ones."""
    r, c = rows - panel.top, cols - panel.left
    return (r >= 2) & (r < panel.size - 2) & (c >= 2) & (c < panel.size - 2)


# ------------------------------------------------------------------------------------------------
# bev
# ------------------------------------------------------------------------------------------------


def test_bev_box_outlines_and_labelled_points_land_on_their_pixels(world, tmp_path) -> None:
    src = Sources.open(world["nus"], predictions=world["det"])
    pic = render_frame(src, 0, ["bev"], ShowConfig(size=SIZE, color_by="label"))["bev"]
    img = pic.to_array()
    path = pic.save(tmp_path / "bev.png")
    np.testing.assert_array_equal(np.round(imread(path) * 255).astype(np.uint8), img)  # the file is these pixels
    panel = pic.panels["bev"]
    fr = src.store[0]
    assert img.shape[:2] == (round(pic.figure.bbox.height), round(pic.figure.bbox.width))

    # Ground-truth and predicted outlines: the middle of each box's rear edge (the front edge
    # carries the heading mark) is drawn in the box colour, exactly where the metres put it.
    # Only edges clear of other boxes' outlines and of the score labels are checked.
    det = inputs.frame_detections(world["det"], src.store, 0)
    assert len(det.boxes) >= 5  # the submission round trip (global frame and back) keeps the boxes
    anchors = box_corners(det.boxes)[:, 0]  # score labels start at predicted front-left corners
    everything = np.vstack([fr.boxes, det.boxes])

    def clear(points: np.ndarray, own: np.ndarray) -> np.ndarray:
        ok = np.ones(len(points), bool)
        for b in everything:  # a few dozen boxes
            near = np.hypot(*(points - b[:2]).T) < 0.5 * np.hypot(b[3], b[4]) + 0.3
            ok &= ~near | (np.abs(own - b[:2]).sum(1) < 1e-3)
        for a in anchors:  # the score text runs right of and above its anchor
            d = points - a[:2]
            ok &= ~((d[:, 0] > -1.0) & (d[:, 0] < 5.0) & (d[:, 1] > -1.0) & (d[:, 1] < 3.0))
        return ok

    for boxes, colour in ((fr.boxes, pal.GT_BOX), (det.boxes, pal.PRED_BOX)):
        inside = (np.abs(boxes[:, :2]) < 45).all(1) & (boxes[:, 3] > 1.0)
        rear = box_corners(boxes)[:, 1:3].mean(1)
        keep = inside & clear(rear, boxes[:, :2])
        assert keep.sum() >= 3
        r, c = panel.pixel_of(rear[keep])
        np.testing.assert_allclose(_rgb(img, r, c), np.tile(colour, (len(r), 1)), atol=0.02)
        big = keep & (boxes[:, 3] > 3.0)  # inside the box, half way to the rear: no outline, no heading mark
        r, c = panel.pixel_of(boxes[big, :2] + 0.5 * (rear[big] - boxes[big, :2]))
        assert big.sum() >= 2 and not np.isclose(_rgb(img, r, c), np.tile(colour, (len(r), 1)), atol=0.02).all(1).any()
    moved = fr.boxes.copy()
    moved[:, 0] += SHIFT
    matched = np.abs(det.boxes[:, None, :] - moved[None]).max(2).min(1)  # every prediction is a moved truth
    assert matched.max() < 1e-3

    # Labelled points: in pixels far from every box, the colour is the palette colour of the
    # highest point of that pixel.
    palette = pal.semantic_palette("nuscenes", src.store.attrs)
    row, col, ok = panel.raster_index(fr.points[:, :2])
    ids = palette.lut[fr.seg_labels.astype(np.int64)]
    far = np.ones(len(fr.points), bool)
    for b in everything:  # a few dozen boxes: keep points 2 m clear of outlines and score labels
        far &= np.hypot(*(fr.points[:, :2] - b[:2]).T) > 0.5 * np.hypot(b[3], b[4]) + 2.0
    for a in anchors:
        d = fr.points[:, :2] - a[:2]
        far &= ~((d[:, 0] > -1.0) & (d[:, 0] < 6.0) & (d[:, 1] > -1.0) & (d[:, 1] < 4.0))
    key = row * SIZE + col
    sel = np.nonzero(ok & far)[0]
    order = sel[np.lexsort((fr.points[sel, 2], key[sel]))]
    last = np.r_[key[order][1:] != key[order][:-1], True]
    top = order[last]  # the highest point of each pixel
    rng = np.random.default_rng(0)
    pick = rng.choice(top[ids[top] >= 0], size=300, replace=False)
    got = _rgb(img, row[pick] + panel.top, col[pick] + panel.left)
    np.testing.assert_allclose(got, palette.colors[ids[pick]], atol=1.5 / 255)
    assert len(np.unique(ids[pick])) >= 4  # several classes, several colours


def test_bev_colours_by_height_and_intensity(world) -> None:
    src = Sources.open(world["nus"])
    a = render_frame(src, 0, ["bev"], ShowConfig(size=200, color_by="height"))["bev"].to_array()
    b = render_frame(src, 0, ["bev"], ShowConfig(size=200, color_by="intensity"))["bev"].to_array()
    assert a.shape == b.shape and (a != b).any()
    with pytest.raises(ValueError, match="color-by"):
        render_frame(src, 0, ["bev"], ShowConfig(size=200, color_by="rainbow"))


# ------------------------------------------------------------------------------------------------
# mask and teacher
# ------------------------------------------------------------------------------------------------


def test_mask_is_pretrainings_and_each_column_shows_its_top_voxel(world) -> None:
    src = Sources.open(world["nus"], teacher=world["nus_t"])
    cfg = ShowConfig(size=SIZE, mask=MaskConfig(), mask_seed=5)
    feats, valid = src.teacher_store.frame(1)
    m = inputs.frame_mask(feats, valid, 1, cfg.mask, seed=5)
    v = len(feats)  # a one-frame batch of frame 1 (masks_for_batch reads the voxels' batch index and frame)
    voxels = VoxelBatch(points=torch.zeros((0, 3)), features=torch.zeros((0, 0)),
                        point_voxel=torch.zeros(0, dtype=torch.int64),
                        voxel_coords=torch.zeros((v, 4), dtype=torch.int32),
                        point_ptr=torch.zeros(2, dtype=torch.int64), frame_index=torch.tensor([1]))
    batch = PretrainBatch(voxels, torch.from_numpy(feats), torch.from_numpy(valid),
                          torch.zeros((v, 1, 3)), torch.ones(v, dtype=torch.int64))
    assert batch.batch_size == 1
    np.testing.assert_array_equal(m.mask, masks_for_batch(batch, cfg.mask, 5, 0).numpy())
    ratios, counts = m.cluster_ratios()
    assert counts.sum() == valid.sum() and 0.2 < m.mask.mean() < 0.8
    assert np.nanmax(ratios) > 0.6 and np.nanmin(ratios) < 0.05  # 0.9 / 0 groups (r_c <= 1)

    pic = render_frame(src, 1, ["mask"], cfg)["mask"]
    img = pic.to_array()
    fr = src.store[1]
    grid = StoreGrid.from_attrs(src.store.attrs)
    top = column_top(fr.voxel_coords, grid.shape_zyx)
    vis_top = column_top(fr.voxel_coords[~m.mask], grid.shape_zyx)
    ys, xs = np.nonzero(top >= 0)
    centre = np.column_stack([grid.point_cloud_range[0] + (xs + 0.5) * grid.voxel_size[0],
                              grid.point_cloud_range[1] + (ys + 0.5) * grid.voxel_size[1]])
    far = np.ones(len(ys), bool)
    for b in fr.boxes:
        far &= np.hypot(*(centre - b[:2]).T) > 0.5 * np.hypot(b[3], b[4]) + 1.0
    a, b = pic.panels["clusters"], pic.panels["visible"]
    r, c = a.pixel_of(centre)
    far &= _interior(a, r, c)
    np.testing.assert_allclose(_rgb(img, r, c)[far], pal.cluster_colors(m.cluster[top[ys, xs]])[far], atol=1.5 / 255)
    r, c = b.pixel_of(centre)
    visible_idx = np.flatnonzero(~m.mask)
    expect = np.tile(pal.MASKED, (len(ys), 1))
    seen = vis_top[ys, xs] >= 0
    expect[seen] = pal.cluster_colors(m.cluster[visible_idx[vis_top[ys, xs][seen]]])
    assert (~seen & far).sum() > 50 and (seen & far).sum() > 50
    np.testing.assert_allclose(_rgb(img, r, c)[far], expect[far], atol=1.5 / 255)


def test_teacher_view_shows_pca_colours_next_to_labels(world) -> None:
    src = Sources.open(world["nus"], teacher=world["nus_t"])
    pic = render_frame(src, 0, ["teacher"], ShowConfig(size=SIZE))["teacher"]
    img = pic.to_array()
    fr = src.store[0]
    feats, valid = src.teacher_store.frame(0)
    rgb, _ = pca_rgb(feats, valid)
    palette = pal.semantic_palette("nuscenes", src.store.attrs)
    labels = inputs.frame_voxel_labels(fr, palette.lut)
    grid = StoreGrid.from_attrs(src.store.attrs)
    top = column_top(fr.voxel_coords, grid.shape_zyx)
    ys, xs = np.nonzero(top >= 0)
    centre = np.column_stack([grid.point_cloud_range[0] + (xs + 0.5) * grid.voxel_size[0],
                              grid.point_cloud_range[1] + (ys + 0.5) * grid.voxel_size[1]])
    v = top[ys, xs]
    r, c = pic.panels["teacher"].pixel_of(centre)
    ok = _interior(pic.panels["teacher"], r, c)
    assert ok.mean() > 0.95
    np.testing.assert_allclose(_rgb(img, r, c)[ok], rgb[v][ok], atol=1.5 / 255)
    r, c = pic.panels["labels"].pixel_of(centre)
    np.testing.assert_allclose(_rgb(img, r, c)[ok], palette.class_colors(labels[v])[ok], atol=1.5 / 255)
    assert len(np.unique(labels[v][labels[v] >= 0])) >= 4


def test_pca_colours_separate_features_that_differ() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 64)) * 3
    cls = rng.integers(0, 3, 600)
    feats = centres[cls] + rng.normal(scale=0.05, size=(600, 64))
    valid = np.ones(600, bool)
    valid[:10] = False
    rgb, ratio = pca_rgb(feats, valid)
    np.testing.assert_allclose(rgb[:10], np.tile(pal.UNLABELLED_COLOR, (10, 1)))
    means = np.array([rgb[10:][cls[10:] == k].mean(0) for k in range(3)])
    spread = max(rgb[10:][cls[10:] == k].std(0).max() for k in range(3))
    gaps = [np.abs(means[i] - means[j]).max() for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 10 * spread and ratio[:2].sum() > 0.95
    perm = rng.permutation(600)  # the same features give the same colours, whatever their order
    again, _ = pca_rgb(feats[perm], valid[perm])
    np.testing.assert_allclose(again, rgb[perm], atol=1e-9)


# ------------------------------------------------------------------------------------------------
# occupancy and range
# ------------------------------------------------------------------------------------------------


def test_occupancy_truth_prediction_and_comparison(world, tmp_path) -> None:
    store = VoxelStore.open(world["nus"])
    grid = OccupancyGridSpec((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.8, 0.8, 0.8))
    fr = store[0]
    truth = frame_ground_truth(fr, NUSCENES, grid).astype(np.int64)
    rng = np.random.default_rng(2)
    # The prediction: the truth without the top voxel of some columns (missed), with a voxel
    # above the top of others (false), unchanged elsewhere (agree).
    nz = grid.shape_zyx[0]
    top = column_top(truth[:, :3], grid.shape_zyx)
    cols = np.argwhere(top >= 0)
    roll = rng.random(len(cols))
    missed, false = cols[roll < 0.2], cols[(roll > 0.8) & (truth[top[cols[:, 0], cols[:, 1]], 0] < nz - 1)]
    gone = np.isin(np.arange(len(truth)), top[missed[:, 0], missed[:, 1]])
    pred = truth[~gone & (truth[:, 3] != 255)]
    above = truth[top[false[:, 0], false[:, 1]]].copy()
    above[:, 0] += 1
    above[:, 3] = 4
    pred = np.vstack([pred, above])
    pred[:, 3] = np.clip(pred[:, 3], 1, 16)
    write_prediction_folder(tmp_path / "occ", NUSCENES, grid, [f"c{i}" for i in range(16)],
                            {fr.frame_id: pred}, {fr.frame_id: "f0"})
    src = Sources.open(world["nus"], predictions=tmp_path / "occ")
    pic = render_frame(src, 0, ["occupancy"], ShowConfig(size=512))["occupancy"]
    img = pic.to_array()

    def centres(cells: np.ndarray) -> np.ndarray:
        return np.column_stack([-51.2 + (cells[:, 1] + 0.5) * 0.8, -51.2 + (cells[:, 0] + 0.5) * 0.8])

    ign_top = truth[top[missed[:, 0], missed[:, 1]], 3] == 255  # an ignored top voxel is never "predicted"
    agree = cols[(roll >= 0.2) & (roll <= 0.8) & (truth[top[cols[:, 0], cols[:, 1]], 3] != 255)]
    cmp = pic.panels["comparison"]
    for cells, colour in ((agree, pal.AGREE), (missed, pal.MISSED), (false, pal.FALSE)):
        assert len(cells) > 5
        r, c = cmp.pixel_of(centres(cells))
        ok = _interior(cmp, r, c)
        np.testing.assert_allclose(_rgb(img, r, c)[ok], np.tile(colour, (int(ok.sum()), 1)), atol=1.5 / 255)
    assert ign_top.sum() < len(missed)
    cell_rgb, on = occupancy_columns(truth, grid, (-5.0, 3.0))
    cells = np.argwhere(on)
    r, c = pic.panels["true"].pixel_of(centres(cells))
    ok = _interior(pic.panels["true"], r, c)
    np.testing.assert_allclose(_rgb(img, r, c)[ok], cell_rgb[on][ok], atol=1.5 / 255)
    assert len(np.unique(cell_rgb[on][ok], axis=0)) > 3  # several heights, several colours


def test_range_image_of_a_waymo_frame(world) -> None:
    src = Sources.open(world["way"])
    fr = src.store[0]
    ri = range_view.range_image(fr)
    top = (fr.features["laser"] == 1) & (fr.features["return_index"] == 0)
    assert np.isfinite(ri.range).sum() > 0.5 * ri.range.size  # the TOP lidar fills most of the image
    # Every pixel holds the nearest of its points.
    xyz = fr.points[top].astype(np.float64)
    row, col = range_view.pixel_of(xyz, range_view.WIDTH, range_view.HEIGHT, ri.inclination)
    rng = np.linalg.norm(xyz - np.asarray(range_view.TOP_ORIGIN), axis=1)
    nearest = np.full(ri.range.shape, np.inf)
    np.minimum.at(nearest, (row, col), rng)
    np.testing.assert_allclose(ri.range[np.isfinite(nearest)], nearest[np.isfinite(nearest)], rtol=1e-6)
    front = np.argmin(np.abs(np.arctan2(xyz[:, 1], xyz[:, 0] - 1.43)))  # straight ahead: the middle column
    assert abs(col[front] - range_view.WIDTH // 2) <= 1

    palette = pal.semantic_palette("waymo", src.store.attrs)
    img = render_frame(src, 0, ["range"], ShowConfig())["range"].to_array()
    labelled = (ri.label >= 0) & (ri.label != 255)
    labelled[[0, -1]] = False  # rows and columns under the axes frame
    labelled[:, [0, 1, -2, -1]] = False
    rr, cc = np.nonzero(labelled)
    k = np.random.default_rng(0).choice(len(rr), 200, replace=False)
    r0 = range_view.TOP + 2 * (range_view.HEIGHT * range_view.ROW_PX + range_view.GAP)
    got = _rgb(img, r0 + rr[k] * range_view.ROW_PX + 2, range_view.LEFT + cc[k])
    np.testing.assert_allclose(got, palette.point_colors(ri.label[rr[k], cc[k]])[1], atol=1.5 / 255)


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------


def _run(args: list[str]):
    return CliRunner().invoke(app, ["show", *args, "--params", str(REPO / "params.yaml"), "--size", "300"])


def test_show_writes_one_png_per_view(world, tmp_path) -> None:
    fid = VoxelStore.open(world["way"]).frame_ids[0]
    r = _run([str(world["way"]), "--frame", fid, "--teacher", str(world["way_t"]), "--out-dir", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted(
        f"{v}.png" for v in ("bev", "mask", "teacher", "occupancy", "range"))
    r = _run([str(world["nus"]), "--frame", "-1", "--view", "bev", "--predictions", str(world["det"]),
              "--out", str(tmp_path / "one.png")])
    assert r.exit_code == 0, r.output
    assert imread(tmp_path / "one.png").shape[2] == 4


def test_show_all_renders_every_frame_in_parallel(world, tmp_path) -> None:
    r = _run([str(world["nus"]), "--all", "--view", "occupancy", "--workers", "2", "--out-dir", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    ids = VoxelStore.open(world["nus"]).frame_ids
    assert sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.png")) == sorted(
        f"{i}/occupancy.png" for i in ids)


@pytest.mark.parametrize("case", ["frame", "teacher", "predictions", "view"])
def test_bad_input_gives_one_clear_error_and_no_picture(world, tmp_path, case) -> None:
    out = tmp_path / "out"
    args = [str(world["nus"]), "--frame", "0", "--out-dir", str(out)]
    match case:
        case "frame":
            args[2], expected = "no-such-frame", "no frame 'no-such-frame'"
        case "teacher":
            args += ["--teacher", str(world["way_t"])]
            expected = "another source store"
        case "predictions":
            sub = json.loads(world["det"].read_text())
            sub["results"]["0123456789abcdef0123456789abcdef"] = []
            (tmp_path / "other.json").write_text(json.dumps(sub))
            args += ["--predictions", str(tmp_path / "other.json")]
            expected = "predictions for other frames"
        case "view":
            args += ["--view", "range"]
            expected = "range view is for Waymo"
    r = _run(args)
    assert r.exit_code == 2
    assert expected in " ".join(r.output.split()) and r.output.count("error:") == 1, r.output
    assert not out.exists()


def test_library_refuses_a_teacher_of_another_store_and_out_of_range_frames(world, tmp_path) -> None:
    with pytest.raises(ValueError, match="another source store"):
        show(world["way"], [0], "bev", out_dir=tmp_path, teacher=world["nus_t"])
    with pytest.raises(ValueError, match="out of range"):
        show(world["nus"], [7], "bev", out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# study and curves
# ------------------------------------------------------------------------------------------------


def test_study_figure_has_a_panel_per_task_and_a_line_per_init(tmp_path) -> None:
    import dataclasses

    from gpicture.viz.study import (
        CurveRun,
        StudyPoint,
        plot_study,
        plot_study_curves,
        study_figure,
    )

    points = [StudyPoint(t, m, i, f, v + (10 if i == "GPICTURE" else 0), 1.0 if f < 1 else 0.0, 2, 2)
              for t, m in (("detection", "mAP (%)"), ("segmentation", "mIoU (%)"))
              for i in ("GPICTURE", "scratch") for f, v in ((0.2, 30.0), (0.5, 50.0), (1.0, 60.0))]
    points[3] = dataclasses.replace(points[3], mean=None, spread=None, seeds=0)   # scratch 20 %: missing
    points[1] = dataclasses.replace(points[1], seeds=1)                           # GPICTURE 50 %: one seed of 2
    pic = study_figure(points)
    axes = [a for a in pic.figure.axes if a.get_title()]
    assert [a.get_title() for a in axes] == ["detection", "segmentation"]
    assert axes[0].get_ylabel() == "mAP (%)"
    bars = {c.get_label(): c for c in axes[0].containers}
    assert set(bars) == {"GPICTURE", "scratch"}
    np.testing.assert_allclose(bars["GPICTURE"].lines[0].get_xdata(), [20, 50, 100])
    np.testing.assert_allclose(bars["GPICTURE"].lines[0].get_ydata(), [40, 60, 70])
    np.testing.assert_allclose(bars["scratch"].lines[0].get_xdata(), [50, 100])   # the missing point is not drawn
    caps = np.concatenate([c.get_ydata() for c in bars["GPICTURE"].lines[1]])     # error bars: mean ± spread
    np.testing.assert_allclose(sorted(caps), [39, 41, 59, 61, 70, 70])
    notes = " ".join(t.get_text() for t in axes[0].texts)
    assert "missing: scratch 20%" in notes and "partial: GPICTURE 50% (1/2 seeds)" in notes
    assert plot_study(points, tmp_path / "s.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="label_fraction"):
        study_figure([dataclasses.replace(points[0], fraction=0)])
    runs = [CurveRun("detection", i, 0.5, s, (0.0, 1.0, 2.0), (3.0, 2.0, 1.5 + s)) for i in ("GPICTURE", "scratch")
            for s in (0, 1)] + [CurveRun("detection", "scratch", 1.0, 0, (), ())]
    assert plot_study_curves(runs, tmp_path / "c.png").stat().st_size > 1000


def test_curves_from_dvclive_metrics(tmp_path) -> None:
    from gpicture.viz.curves import curves_figure, plot_curves

    root = tmp_path / "dvclive" / "plots" / "metrics"
    for name, vals in (("train/loss", [3, 2, 1]), ("eval/loss", [4, 3, 2.5]), ("lr", [0.1, 0.2, 0.1])):
        f = root / f"{name}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        key = name.rsplit("/", 1)[-1]
        f.write_text(f"timestamp\tstep\t{key}\n" + "".join(f"0\t{s}\t{v}\n" for s, v in enumerate(vals)))
    pic = curves_figure(tmp_path / "dvclive")
    axes = {a.get_title(): a for a in pic.figure.axes if a.get_title()}
    assert set(axes) == {"loss", "lr"}
    loss = {ln.get_label(): ln.get_ydata() for ln in axes["loss"].get_lines()}
    np.testing.assert_allclose(loss["train/loss"], [3, 2, 1])
    np.testing.assert_allclose(loss["eval/loss"], [4, 3, 2.5])
    assert plot_curves(tmp_path / "dvclive", tmp_path / "c.png").is_file()
    with pytest.raises(ValueError, match="no dvclive metrics"):
        curves_figure(tmp_path)
