"""Vector overlays and legends shared by the views: box outlines, heading marks, scores, legends."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from gpicture.viz.canvas import FONT, BevPanel, add_axes_px

BOX_LINE_PX = 3.0  # outline width in pixels (points = px * 72 / dpi): the pixel under an edge is fully covered


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(K, 7) x, y, z, l, w, h, yaw -> (K, 4, 2) BEV corners, counter-clockwise from front-left
    (front = +l/2 along the heading)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    hl, hw = b[:, 3] / 2, b[:, 4] / 2
    local = np.stack([np.stack([hl, hw], -1), np.stack([-hl, hw], -1), np.stack([-hl, -hw], -1),
                      np.stack([hl, -hw], -1)], 1)  # (K, 4, 2)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)  # (K, 2, 2)
    return np.einsum("kij,kcj->kci", rot, local) + b[:, None, :2]


def box_segments(boxes: np.ndarray) -> np.ndarray:
    """(K, 7) boxes -> (5K, 2, 2) line segments: the four edges and the heading mark (centre to
    the middle of the front edge) of each box."""
    corners = box_corners(boxes)
    edges = np.stack([corners, np.roll(corners, -1, axis=1)], 2)  # (K, 4, 2, 2)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    front = (corners[:, 0] + corners[:, 3]) / 2
    heading = np.stack([b[:, :2], front], 1)[:, None]  # (K, 1, 2, 2)
    return np.concatenate([edges, heading], 1).reshape(-1, 2, 2)


def draw_boxes(ax: Axes, panel: BevPanel, boxes: np.ndarray, color: Sequence[float],
               scores: np.ndarray | None = None, dpi: int = 100) -> None:
    """Outlines and heading marks of ``boxes`` (K, 7) in the panel's metres; with ``scores``, each
    box's score is written next to its front-left corner. Boxes fully outside the panel are
    skipped (their text would land outside the axes)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    lo, hi = np.array([panel.x0, panel.y0]), np.array([panel.x0, panel.y0]) + panel.extent
    keep = ((b[:, :2] >= lo) & (b[:, :2] < hi)).all(1)
    b = b[keep]
    if len(b) == 0:
        return
    lines = LineCollection(box_segments(b), colors=[tuple(color)], linewidths=BOX_LINE_PX * 72 / dpi,
                           capstyle="projecting", joinstyle="miter", zorder=3)
    ax.add_collection(lines)
    if scores is not None:
        corners = box_corners(b)
        for (x, y), s in zip(corners[:, 0], np.asarray(scores)[keep], strict=True):  # one label per box
            ax.text(x, y, f"{s:.2f}", color=tuple(color), fontsize=FONT - 4, ha="left", va="bottom", zorder=4,
                    clip_on=True)


def patch_legend(leg: Axes, items: Sequence[tuple[str, Sequence[float]]], title: str | None = None,
                 loc: str = "upper left", anchor_y: float = 1.0, ncol: int = 1) -> None:
    """A legend of colour patches in the legend strip (kept as an artist so several can stack)."""
    handles = [Patch(facecolor=tuple(c), edgecolor="none", label=name) for name, c in items]
    lg = leg.legend(handles=handles, loc=loc, bbox_to_anchor=(0.0, anchor_y), frameon=False, fontsize=FONT - 2,
                    title=title, title_fontsize=FONT - 1, alignment="left", ncol=ncol, handlelength=1.2,
                    borderaxespad=0.0, labelspacing=0.3)
    leg.add_artist(lg)


def colorbar(fig: Figure, left: int, top: int, length: int, cmap: str, vmin: float, vmax: float, label: str) -> None:
    """A horizontal colour bar at the pixel box (left, top, length x 14)."""
    cax = add_axes_px(fig, left, top, length, 14)
    cb = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=cax, orientation="horizontal")
    cb.set_label(label, fontsize=FONT - 2)
    cb.ax.tick_params(labelsize=FONT - 3)
