"""The bird's-eye views of one frame: points, I²Mask, teacher features, occupancy.

Every view is a row of square BEV panels over the store's point-cloud range (x right, y up, in
the points' frame: keyframe LiDAR frame for nuScenes, vehicle frame for Waymo) with a legend
strip; see :mod:`gpicture.viz.canvas` for the exact pixel mapping.

- ``bev``: points coloured by height, intensity or semantic label (the dataset's palette), the
  highest point of each pixel on top; ground-truth boxes (black) with heading marks, predicted
  boxes (magenta) with their scores.
- ``mask``: I²Mask of the frame on the student grid: (a) the highest voxel of each column
  coloured by its k-means cluster, (b) what the student sees: the highest *visible* voxel of
  each column in its cluster's colour, columns with only masked voxels grey. The legend gives
  each cluster's masked fraction and size.
- ``teacher``: (a) the teacher features of the highest voxel of each column projected to RGB by
  a PCA of the frame's features (3 components, each stretched to its 2-98 percentiles), (b) the
  same voxels' semantic labels (majority of their points).
- ``occupancy``: the highest occupied voxel of each column coloured by its height; with a
  prediction: truth, prediction, and their comparison: the highest voxel of each column among
  true and predicted voxels, coloured by whether it is in both (agree), only in the truth
  (missed) or only in the prediction (false), with the frame's geometric IoU and mIoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib as mpl
import numpy as np

from gpicture.data.occupancy_targets import OccupancyGridSpec
from gpicture.data.spec import OCCUPANCY_IGNORE
from gpicture.data.store import StoreFrame
from gpicture.eval.occupancy import frame_confusion
from gpicture.viz import palette as pal
from gpicture.viz.canvas import LEGEND, Picture, bev_row, show_raster
from gpicture.viz.draw import colorbar, draw_boxes, patch_legend
from gpicture.viz.inputs import FrameBoxesLidar, FrameMask, frame_voxel_labels
from gpicture.viz.raster import column_top, grid_raster, points_raster

HEIGHT_CMAP, INTENSITY_CMAP = "viridis", "plasma"
COLOR_BY = ("auto", "height", "intensity", "label")


@dataclass(frozen=True)
class StoreGrid:
    """The store's canonical voxel grid (points' frame, metres)."""

    point_cloud_range: tuple[float, ...]  # x0, y0, z0, x1, y1, z1
    voxel_size: tuple[float, float, float]  # x, y, z
    shape_zyx: tuple[int, int, int]

    @classmethod
    def from_attrs(cls, attrs: dict) -> StoreGrid:
        r = tuple(float(v) for v in attrs["point_cloud_range"])
        vs = tuple(float(v) for v in attrs["voxel_size"])
        shape = attrs.get("grid_shape_zyx")
        if shape is None:
            shape = [round((r[5] - r[2]) / vs[2]), round((r[4] - r[1]) / vs[1]), round((r[3] - r[0]) / vs[0])]
        return cls(r, vs, tuple(int(v) for v in shape))  # type: ignore[arg-type]

    def extent(self) -> tuple[float, float, float]:
        """(x0, y0, side) of the square BEV panel covering the range."""
        r = self.point_cloud_range
        return r[0], r[1], max(r[3] - r[0], r[4] - r[1])


def _frame_title(view: str, frame: StoreFrame, dataset: str) -> str:
    return f"{dataset} · frame {frame.frame_id} · {view}"


def _voxel_columns(panel_grid: StoreGrid, coords: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cell_rgb (ny, nx, 3), cell_on (ny, nx)) of the highest voxel of each column."""
    top = column_top(coords, panel_grid.shape_zyx)
    on = top >= 0
    cell = np.zeros((*top.shape, 3))
    cell[on] = rgb[top[on]]
    return cell, on


def _grid_raster(panel, grid: StoreGrid, cell: np.ndarray, on: np.ndarray) -> np.ndarray:
    r, vs = grid.point_cloud_range, grid.voxel_size
    return grid_raster(panel, cell, on, (r[0], r[1]), (vs[0], vs[1]))


# ------------------------------------------------------------------------------------------------
# bev
# ------------------------------------------------------------------------------------------------


def point_colors(frame: StoreFrame, dataset: str, color_by: str, palette: pal.SemanticPalette
                 ) -> tuple[np.ndarray, str, tuple[float, float] | None]:
    """(RGB (N, 3), the colouring used, (vmin, vmax) of a continuous colouring or None)."""
    if color_by not in COLOR_BY:
        raise ValueError(f"--color-by must be one of {', '.join(COLOR_BY)}, not {color_by!r}")
    labelled = frame.seg_labels is not None and bool((frame.seg_labels != 255).any())
    if color_by == "auto":
        color_by = "label" if labelled else "height"
    if color_by == "label":
        if frame.seg_labels is None:
            raise ValueError(f"frame {frame.frame_id}: no semantic labels to colour by (use --color-by height)")
        return palette.point_colors(frame.seg_labels)[1], "label", None
    if color_by == "height":
        v = frame.points[:, 2].astype(np.float64)
        lo, hi = np.percentile(v, [1, 99]) if len(v) else (0.0, 1.0)
        cmap = HEIGHT_CMAP
    else:
        v = frame.features["intensity"].astype(np.float64)
        lo, hi = 0.0, float(np.percentile(v, 99)) if len(v) else 1.0
        cmap = INTENSITY_CMAP
    hi = hi if hi > lo else lo + 1.0
    rgb = mpl.colormaps[cmap](np.clip((v - lo) / (hi - lo), 0, 1))[:, :3]
    return rgb, color_by, (float(lo), float(hi))


def render_bev(frame: StoreFrame, dataset: str, grid: StoreGrid, palette: pal.SemanticPalette,
               color_by: str = "auto", predictions: FrameBoxesLidar | None = None, score_threshold: float = 0.3,
               size: int = 800) -> Picture:
    """The ``bev`` view (module docstring). Predicted boxes below ``score_threshold`` are left out."""
    rgb, used, vrange = point_colors(frame, dataset, color_by, palette)
    fig, (ax,), (panel,), leg = bev_row(1, size, grid.extent(), [f"points by {used}"],
                                        _frame_title("bird's-eye view", frame, dataset))
    image, _ = points_raster(panel, frame.points, rgb)
    show_raster(ax, panel, image)
    draw_boxes(ax, panel, frame.boxes, pal.GT_BOX, dpi=fig.dpi)
    items: list[tuple[str, tuple[float, ...]]] = []
    if used == "label":
        ids = palette.lut[frame.seg_labels.astype(np.int64)]
        present = np.unique(ids[ids >= 0])
        items += [(palette.names[i], tuple(palette.colors[i])) for i in present]
        if (ids < 0).any():
            items.append(("unlabelled", pal.UNLABELLED_COLOR))
    items.append((f"ground truth ({len(frame.boxes)})", pal.GT_BOX))
    if predictions is not None:
        keep = predictions.scores >= score_threshold
        draw_boxes(ax, panel, predictions.boxes[keep], pal.PRED_BOX, scores=predictions.scores[keep], dpi=fig.dpi)
        items.append((f"predicted, score ≥ {score_threshold:g} ({int(keep.sum())})", pal.PRED_BOX))
    patch_legend(leg, items, ncol=2 if len(items) > 22 else 1)
    if vrange is not None:
        unit = "z (m)" if used == "height" else "intensity"
        colorbar(fig, panel.left + size + 92, panel.top + size - 40, LEGEND - 110,
                 HEIGHT_CMAP if used == "height" else INTENSITY_CMAP, *vrange, unit)
    return Picture(fig, {"bev": panel})


# ------------------------------------------------------------------------------------------------
# mask
# ------------------------------------------------------------------------------------------------


def render_mask(frame: StoreFrame, dataset: str, grid: StoreGrid, mask: FrameMask, seed: int, epoch: int,
                size: int = 800) -> Picture:
    """The ``mask`` view (module docstring)."""
    fig, axes, panels, leg = bev_row(2, size, grid.extent(), ["voxels by k-means cluster",
                                                              "student input: visible voxels (masked grey)"],
                                     _frame_title(f"I²Mask (seed {seed}, epoch {epoch})", frame, dataset))
    coords = frame.voxel_coords
    colors = pal.cluster_colors(mask.cluster)
    cell, on = _voxel_columns(grid, coords, colors)
    show_raster(axes[0], panels[0], _grid_raster(panels[0], grid, cell, on))
    # Student panel: masked columns grey first, then the top visible voxel of each column over them.
    any_cell, any_on = _voxel_columns(grid, coords, np.broadcast_to(np.asarray(pal.MASKED), (len(coords), 3)))
    image = _grid_raster(panels[1], grid, any_cell, any_on)
    vis = ~mask.mask
    vcell, von = _voxel_columns(grid, coords[vis], colors[vis])
    r, vs = grid.point_cloud_range, grid.voxel_size
    show_raster(axes[1], panels[1], grid_raster(panels[1], vcell, von, (r[0], r[1]), (vs[0], vs[1]), image=image))
    ratios, counts = mask.cluster_ratios()
    items = [(f"cluster {k}: {100 * r:.0f}% masked ({n} vox)", tuple(pal.CLUSTER_COLORS[k % len(pal.CLUSTER_COLORS)]))
             for k, (r, n) in enumerate(zip(ratios, counts, strict=True)) if n > 0]
    if (mask.cluster < 0).any():
        none = mask.cluster < 0
        items.append((f"no teacher target: {100 * mask.mask[none].mean():.0f}% masked ({int(none.sum())} vox)",
                      pal.UNLABELLED_COLOR))
    items.append(("masked (panel b)", pal.MASKED))
    total = f"{100 * mask.mask.mean():.1f}% of {len(mask.mask)} voxels masked" if len(mask.mask) else "no voxels"
    patch_legend(leg, items, title=total)
    for ax, panel in zip(axes, panels, strict=True):
        draw_boxes(ax, panel, frame.boxes, pal.GT_BOX, dpi=fig.dpi)
    return Picture(fig, {"clusters": panels[0], "visible": panels[1]})


# ------------------------------------------------------------------------------------------------
# teacher
# ------------------------------------------------------------------------------------------------


def pca_rgb(features: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Teacher features (V, D) -> (RGB (V, 3) in [0, 1], explained variance ratio (3,)) by PCA over
    the valid rows; each component stretched to its 2-98 percentiles (at least a quarter of the
    first component's) and signed so that its largest loading is positive (the same features
    give the same colours). Invalid rows grey."""
    v = len(features)
    rgb = np.broadcast_to(np.asarray(pal.UNLABELLED_COLOR), (v, 3)).copy()
    x = np.asarray(features, dtype=np.float64)[valid]
    if len(x) < 2:
        return rgb, np.zeros(3)
    x = x - x.mean(0)
    cov = x.T @ x / (len(x) - 1)
    w, vec = np.linalg.eigh(cov)  # ascending
    order = np.argsort(w)[::-1][:3]
    comp = vec[:, order]
    comp *= np.sign(comp[np.abs(comp).argmax(0), np.arange(comp.shape[1])])[None]
    proj = x @ comp
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 2, axis=0), np.percentile(proj, 98, axis=0)
    # Each component spans its own 2-98 % range, but never less than a quarter of the first's:
    # a component that is only noise is not stretched into full-range colour.
    span = np.maximum(hi - lo, max(0.25 * (hi[0] - lo[0]), 1e-12))
    rgb[valid] = np.clip(0.5 + (proj - (lo + hi) / 2) / span, 0, 1)
    ratio = w[order] / max(w.sum(), 1e-12)
    return rgb, np.pad(ratio, (0, 3 - len(ratio)))


def render_teacher(frame: StoreFrame, dataset: str, grid: StoreGrid, palette: pal.SemanticPalette,
                   features: np.ndarray, valid: np.ndarray, size: int = 800) -> Picture:
    """The ``teacher`` view (module docstring)."""
    fig, axes, panels, leg = bev_row(2, size, grid.extent(), ["teacher features, PCA → RGB", "semantic labels"],
                                     _frame_title("teacher features", frame, dataset))
    rgb, ratio = pca_rgb(features, valid)
    cell, on = _voxel_columns(grid, frame.voxel_coords, rgb)
    show_raster(axes[0], panels[0], _grid_raster(panels[0], grid, cell, on))
    labels = frame_voxel_labels(frame, palette.lut)
    cell, on = _voxel_columns(grid, frame.voxel_coords, palette.class_colors(labels))
    show_raster(axes[1], panels[1], _grid_raster(panels[1], grid, cell, on))
    present = np.unique(labels[labels >= 0])
    items = [(palette.names[i], tuple(palette.colors[i])) for i in present]
    items.append(("no label / no teacher target", pal.UNLABELLED_COLOR))
    patch_legend(leg, items, title=f"PCA variance: {', '.join(f'{100 * r:.0f}%' for r in ratio)}")
    return Picture(fig, {"teacher": panels[0], "labels": panels[1]})


# ------------------------------------------------------------------------------------------------
# occupancy
# ------------------------------------------------------------------------------------------------


def occupancy_columns(rows: np.ndarray, grid: OccupancyGridSpec, zrange: tuple[float, float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy rows (K, 4) -> (cell_rgb (ny, nx, 3), cell_on (ny, nx)): the height colour of the
    highest occupied voxel of each column (voxel centre, metres, over ``zrange``)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    z0, vz = grid.point_cloud_range[2], grid.voxel_size[2]
    zc = z0 + (rows[:, 0] + 0.5) * vz
    rgb = mpl.colormaps[HEIGHT_CMAP](np.clip((zc - zrange[0]) / (zrange[1] - zrange[0]), 0, 1))[:, :3]
    top = column_top(rows[:, :3], grid.shape_zyx)
    on = top >= 0
    cell = np.zeros((*top.shape, 3))
    cell[on] = rgb[top[on]]
    return cell, on


def render_occupancy(frame: StoreFrame, dataset: str, truth: np.ndarray, grid: OccupancyGridSpec,
                     prediction: np.ndarray | None = None, class_names: list[str] | None = None,
                     size: int = 800) -> Picture:
    """The ``occupancy`` view (module docstring): ``truth`` and ``prediction`` rows on ``grid``."""
    r = grid.point_cloud_range
    extent = (r[0], r[1], max(r[3] - r[0], r[4] - r[1]))
    zrange = (r[2], r[5])
    titles = ["true occupancy (top voxel height)"]
    if prediction is not None:
        titles += ["predicted occupancy", "top voxel: true and/or predicted"]
    fig, axes, panels, leg = bev_row(len(titles), size, extent, titles, _frame_title(
        f"occupancy ({grid.voxel_size[0]:g} m voxels)", frame, dataset))
    origin, cell_xy = (r[0], r[1]), (grid.voxel_size[0], grid.voxel_size[1])
    cell, t_on = occupancy_columns(truth, grid, zrange)
    show_raster(axes[0], panels[0], grid_raster(panels[0], cell, t_on, origin, cell_xy))
    items: list[tuple[str, tuple[float, ...]]] = []
    title = f"{len(truth)} true voxels"
    if prediction is not None:
        cell, p_on = occupancy_columns(prediction, grid, zrange)
        show_raster(axes[1], panels[1], grid_raster(panels[1], cell, p_on, origin, cell_xy))
        cmp, c_on = comparison_columns(truth, prediction, grid)
        show_raster(axes[2], panels[2], grid_raster(panels[2], cmp, c_on, origin, cell_xy))
        items = [("occupied in both", pal.AGREE), ("missed (true only)", pal.MISSED),
                 ("false (predicted only)", pal.FALSE)]
        iou, miou = frame_occupancy_scores(truth, prediction, grid, len(class_names or []))
        title = f"frame IoU {100 * iou:.1f} · mIoU {100 * miou:.1f}" if np.isfinite(miou) else \
            f"frame IoU {100 * iou:.1f}"
    patch_legend(leg, items, title=title)
    colorbar(fig, panels[-1].left + size + 16, panels[-1].top + size - 40, LEGEND - 40, HEIGHT_CMAP, *zrange,
             "height of the top voxel, z (m)")
    names = ["true", "predicted", "comparison"]
    return Picture(fig, {names[k]: p for k, p in enumerate(panels)})


def comparison_columns(truth: np.ndarray, prediction: np.ndarray, grid: OccupancyGridSpec
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(cell_rgb (ny, nx, 3), cell_on (ny, nx)): the highest voxel of each column among the true
    and predicted rows, AGREE if it is in both, MISSED if only true, FALSE if only predicted."""
    _, ny, nx = grid.shape_zyx
    t = np.asarray(truth, np.int64).reshape(-1, 4)[:, :3]
    p = np.asarray(prediction, np.int64).reshape(-1, 4)[:, :3]
    tk, pk = (t[:, 0] * ny + t[:, 1]) * nx + t[:, 2], (p[:, 0] * ny + p[:, 1]) * nx + p[:, 2]
    keys = np.union1d(tk, pk)
    in_t, in_p = np.isin(keys, tk), np.isin(keys, pk)
    z, rem = np.divmod(keys, ny * nx)
    y, x = np.divmod(rem, nx)
    top = column_top(np.column_stack([z, y, x]), grid.shape_zyx)
    on = top >= 0
    status = np.select([in_t & in_p, in_t], [0, 1], 2)  # agree, missed, false
    table = np.array([pal.AGREE, pal.MISSED, pal.FALSE])
    cell = np.zeros((ny, nx, 3))
    cell[on] = table[status[top[on]]]
    return cell, on


def frame_occupancy_scores(truth: np.ndarray, prediction: np.ndarray, grid: OccupancyGridSpec,
                           num_classes: int) -> tuple[float, float]:
    """(geometric IoU, mIoU over the classes present in truth or prediction) of one frame, as
    :mod:`gpicture.eval.occupancy` scores a split (OCCUPANCY_IGNORE truth voxels excluded)."""
    c = max(num_classes, int(np.max(prediction[:, 3], initial=0)),
            int(np.max(np.where(truth[:, 3] == OCCUPANCY_IGNORE, 0, truth[:, 3]), initial=0)))
    conf = frame_confusion(np.asarray(truth), np.asarray(prediction), grid.shape_zyx, c).astype(np.float64)
    occ_t, occ_p = conf[1:, :].sum(), conf[:, 1:].sum()
    both = conf[1:, 1:].sum()
    iou = both / max(occ_t + occ_p - both, 1.0)
    tp = np.diag(conf)[1:]
    denom = conf[1:, :].sum(1) + conf[:, 1:].sum(0) - tp
    per = tp[denom > 0] / denom[denom > 0]
    return float(iou), float(per.mean()) if len(per) else float("nan")

