"""A range-image view of a Waymo frame (range, intensity, labels), rebuilt from the store.

The store keeps points, not the sensor's range images, so the picture is a spherical projection
of the TOP lidar's first-return points (``laser`` 1, ``return_index`` 0) about the lidar's
mount (:data:`TOP_ORIGIN`, Waymo's TOP extrinsic, which the synthetic default also uses):
columns are azimuth, left = behind the car on its left (+π) through forward (0) to -π, as in
Waymo's range images; rows are inclination, uniform between the frame's highest and lowest
TOP return (Waymo's beams are not uniform, so an image row is close to, not exactly, one beam).
Each pixel shows its nearest point. It is built from the store rather than the raw tfrecords so
it works for any store, real or synthetic, without the raw files.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib as mpl
import numpy as np

from gpicture.data.store import StoreFrame
from gpicture.viz import palette as pal
from gpicture.viz.canvas import (
    FONT,
    TITLE_FONT,
    Picture,
    add_axes_px,
    new_figure,
    place_image,
)
from gpicture.viz.draw import patch_legend
from gpicture.viz.raster import top_per_key

TOP_LASER, TOP_ORIGIN = 1, (1.43, 0.0, 2.184)  # LaserName.TOP; mount in the vehicle frame (m)
WIDTH, HEIGHT, ROW_PX = 1325, 64, 4  # columns (half of TOP's 2650), rows (beams), pixels per row
LEFT, TOP, GAP, RIGHT, BOTTOM = 70, 44, 46, 400, 44  # layout (pixels): panel k starts at row TOP + k (H ROW_PX + GAP)


@dataclass
class RangeImage:
    """A (H, W) spherical projection; -1 / NaN where no point falls."""

    range: np.ndarray  # (H, W) float, metres from the mount, NaN empty
    intensity: np.ndarray  # (H, W) float, NaN empty
    label: np.ndarray  # (H, W) int64 stored label, -1 empty (255 = unlabelled point)
    inclination: tuple[float, float]  # (top row, bottom row) rad


def pixel_of(xyz: np.ndarray, width: int, height: int, incl: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 3) in the vehicle frame -> (row, col) of the projection with ``incl`` =
    (highest, lowest) inclination; rows clipped to the image."""
    d = np.asarray(xyz, np.float64) - np.asarray(TOP_ORIGIN)
    az = np.arctan2(d[:, 1], d[:, 0])
    col = np.clip(np.floor((np.pi - az) / (2 * np.pi) * width), 0, width - 1).astype(np.int64)
    inc = np.arctan2(d[:, 2], np.hypot(d[:, 0], d[:, 1]))
    span = incl[0] - incl[1] if incl[0] > incl[1] else 1.0
    row = np.clip(np.floor((incl[0] - inc) / span * height), 0, height - 1).astype(np.int64)
    return row, col


def range_image(frame: StoreFrame, width: int = WIDTH, height: int = HEIGHT) -> RangeImage:
    """The projection of the module docstring (ValueError for a frame without TOP returns)."""
    if "laser" not in frame.features:
        raise ValueError(f"frame {frame.frame_id}: no 'laser' feature (a range image needs a Waymo store)")
    keep = frame.features["laser"] == TOP_LASER
    if "return_index" in frame.features:
        keep &= frame.features["return_index"] == 0
    xyz = frame.points[keep].astype(np.float64)
    if len(xyz) == 0:
        raise ValueError(f"frame {frame.frame_id}: no TOP lidar first-return points")
    d = xyz - np.asarray(TOP_ORIGIN)
    inc = np.arctan2(d[:, 2], np.hypot(d[:, 0], d[:, 1]))
    incl = (float(inc.max()), float(inc.min()))
    row, col = pixel_of(xyz, width, height, incl)
    rng = np.linalg.norm(d, axis=1)
    near = top_per_key(row * width + col, -rng)  # the nearest point of each pixel
    out_r = np.full((height, width), np.nan)
    out_i = np.full((height, width), np.nan)
    out_l = np.full((height, width), -1, dtype=np.int64)
    r, c = row[near], col[near]
    out_r[r, c] = rng[near]
    out_i[r, c] = frame.features["intensity"][keep][near]
    if frame.seg_labels is not None:
        out_l[r, c] = frame.seg_labels[keep][near]
    return RangeImage(out_r, out_i, out_l, incl)


def render_range(frame: StoreFrame, palette: pal.SemanticPalette, width: int = WIDTH, height: int = HEIGHT) -> Picture:
    """Three stacked panels (range, intensity, labels) of :func:`range_image`, each ``height`` rows
    of ROW_PX pixels and ``width`` columns, black where no point: pixel (r, c) of panel k is image
    rows TOP + k (height ROW_PX + GAP) + r ROW_PX ... + ROW_PX - 1, column LEFT + c."""
    ri = range_image(frame, width, height)
    left, top, gap, right, bottom = LEFT, TOP, GAP, RIGHT, BOTTOM
    ph = height * ROW_PX
    fig = new_figure(left + width + right, top + 3 * ph + 2 * gap + bottom)
    W, H = fig.bbox.width, fig.bbox.height
    fig.text(left / W, 1 - 8 / H, f"waymo · frame {frame.frame_id} · TOP lidar range image (rebuilt from points)",
             ha="left", va="top", fontsize=TITLE_FONT, weight="bold")
    lab_rgb = np.zeros((height, width, 3))
    has = ri.label >= 0
    lab_rgb[has] = palette.point_colors(ri.label[has])[1]
    rmax = float(np.nanpercentile(ri.range, 99)) if np.isfinite(ri.range).any() else 1.0
    imax = float(np.nanpercentile(ri.intensity, 99)) if np.isfinite(ri.intensity).any() else 1.0
    panels = [("range (m)", mpl.colormaps["turbo"], ri.range, (0.0, rmax)),
              ("intensity", mpl.colormaps["plasma"], ri.intensity, (0.0, imax)),
              ("semantic label", None, lab_rgb, None)]
    extent = (180.0, -180.0, np.degrees(ri.inclination[1]), np.degrees(ri.inclination[0]))
    for k, (name, cmap, data, vr) in enumerate(panels):
        ax = add_axes_px(fig, left, top + k * (ph + gap), width, ph)
        img = data
        if cmap is not None:
            img = np.zeros((height, width, 3))
            ok = np.isfinite(data)
            img[ok] = cmap(np.clip(data[ok] / max(vr[1], 1e-9), 0, 1))[:, :3]
            cax = add_axes_px(fig, left + width + 16, top + k * (ph + gap), 14, ph)
            fig.colorbar(mpl.cm.ScalarMappable(mpl.colors.Normalize(*vr), cmap), cax=cax).ax.tick_params(
                labelsize=FONT - 3)
        place_image(ax, left, top + k * (ph + gap), np.repeat(img, ROW_PX, axis=0))
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_title(name, fontsize=FONT, pad=4, loc="left")
        ax.set_ylabel("incl. (°)", fontsize=FONT - 2)
        ax.tick_params(labelsize=FONT - 3)
        if k == 2:
            ax.set_xlabel("azimuth (°)", fontsize=FONT - 1)
    leg = add_axes_px(fig, left + width + 16, top + 2 * (ph + gap), right - 20, ph + bottom)
    leg.set_axis_off()
    ids = palette.lut[np.unique(ri.label[has])] if has.any() else np.zeros(0, np.int64)
    present = np.unique(ids[ids >= 0])
    items = [(palette.names[i], tuple(palette.colors[i])) for i in present]
    if not items:
        items = [("no labels in this frame", pal.UNLABELLED_COLOR)]
    patch_legend(leg, items, ncol=2 if len(items) > 9 else 1)
    return Picture(fig, {})
