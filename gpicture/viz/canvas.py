"""Figures with an exact pixel layout, rendered headless with matplotlib's Agg canvas.

Every picture is a :class:`matplotlib.figure.Figure` attached to its own ``FigureCanvasAgg``
(never pyplot: no global figure registry, no backend switch, nothing shared between calls).
Figures are sized in pixels at :data:`DPI`; panels sit at integer pixel offsets, so a panel
of ``size`` pixels showing ``extent`` metres maps metres to pixels exactly
(:meth:`BevPanel.pixel_of`). Rasters (points, voxels) are computed in numpy on that same pixel
grid and placed unresampled (``figimage``): one raster pixel is one image pixel.
Boxes are vector outlines drawn over them.

Layout of a row of BEV panels (pixels)::

    +--------------------------------------------------------------+
    | title (TOP)                                                  |
    | LEFT  [panel 0, size x size] GAP [panel 1] ...  LEGEND strip |
    | BOTTOM (x axis)                                              |
    +--------------------------------------------------------------+
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gpicture.atomic import write_file_atomic

DPI = 100
LEFT, TOP, BOTTOM, GAP = 70, 62, 56, 78  # pixels around and between panels
LEGEND = 300  # legend strip on the right
FONT = 11  # points: readable at a slide's and a paper column's scale
TITLE_FONT = 13


@dataclass(frozen=True)
class BevPanel:
    """A square bird's-eye-view panel: ``size`` x ``size`` pixels showing [x0, x0 + extent) x
    [y0, y0 + extent) metres in the points' frame; x to the right, y up. ``left`` / ``top``: its
    first pixel column / row in the saved image (row 0 = top of the image)."""

    left: int
    top: int
    size: int
    x0: float
    y0: float
    extent: float

    @property
    def res(self) -> float:
        """Metres per pixel."""
        return self.extent / self.size

    def raster_index(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points (N, 2) metres -> (row (N,), col (N,), inside (N,) bool) in the panel's raster
        (row 0 = the panel's top edge, y = y0 + extent). Rows and cols are valid only where inside."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        col = np.floor((xy[:, 0] - self.x0) / self.res).astype(np.int64)
        row = np.floor((self.y0 + self.extent - xy[:, 1]) / self.res).astype(np.int64)
        inside = (col >= 0) & (col < self.size) & (row >= 0) & (row < self.size)
        return row, col, inside

    def pixel_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points (N, 2) metres -> (row, col) int pixels in the saved image."""
        row, col, _ = self.raster_index(xy)
        return row + self.top, col + self.left

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(x (size,), y (size,)) metres of the centres of the raster's columns and rows."""
        c = (np.arange(self.size) + 0.5) * self.res
        return self.x0 + c, self.y0 + self.extent - c


@dataclass
class Picture:
    """A rendered figure and the geometry of its panels (for tests and callers that annotate)."""

    figure: Figure
    panels: dict[str, BevPanel] = field(default_factory=dict)

    def to_array(self) -> np.ndarray:
        """The image as (H, W, 4) uint8 RGBA, exactly the pixels :meth:`save` writes."""
        canvas = self.figure.canvas
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()

    def png_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=DPI)
        return buf.getvalue()

    def save(self, path: Path) -> Path:
        """Write the PNG atomically (no half-written picture on an interruption)."""
        write_file_atomic(Path(path), self.png_bytes())
        return Path(path)


def new_figure(width_px: int, height_px: int) -> Figure:
    """A white figure of exactly ``width_px`` x ``height_px`` pixels with its own Agg canvas."""
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def add_axes_px(fig: Figure, left: int, top: int, width: int, height: int) -> Axes:
    """Axes covering the pixel box [left, left + width) x [top, top + height) of the image."""
    w, h = fig.bbox.width, fig.bbox.height
    return fig.add_axes((left / w, 1.0 - (top + height) / h, width / w, height / h))


def bev_row(n_panels: int, size: int, extent: tuple[float, float, float], titles: list[str],
            title: str, legend: bool = True) -> tuple[Figure, list[Axes], list[BevPanel], Axes | None]:
    """A figure with ``n_panels`` BEV panels in a row, each ``size`` px showing ``extent`` =
    (x0, y0, side) metres, and an (empty, axis-less) legend strip on the right.
    Returns (figure, panel axes, panel geometry, legend axes)."""
    x0, y0, side = extent
    width = LEFT + n_panels * size + (n_panels - 1) * GAP + (LEGEND if legend else 20)
    height = TOP + size + BOTTOM
    fig = new_figure(width, height)
    fig.text(LEFT / width, 1.0 - 8 / height, title, ha="left", va="top", fontsize=TITLE_FONT, weight="bold")
    axes, panels = [], []
    for k in range(n_panels):
        left = LEFT + k * (size + GAP)
        ax = add_axes_px(fig, left, TOP, size, size)
        ax.set_xlim(x0, x0 + side)
        ax.set_ylim(y0, y0 + side)
        ax.set_title(titles[k], fontsize=FONT, pad=6)
        ax.set_xlabel("x (m)", fontsize=FONT)
        if k == 0:
            ax.set_ylabel("y (m)", fontsize=FONT)
        ax.tick_params(labelsize=FONT - 2)
        axes.append(ax)
        panels.append(BevPanel(left, TOP, size, x0, y0, side))
    leg = None
    if legend:
        leg = add_axes_px(fig, LEFT + n_panels * size + (n_panels - 1) * GAP + 16, TOP, LEGEND - 24, size)
        leg.set_axis_off()
    return fig, axes, panels, leg


def place_image(ax: Axes, left: int, top: int, rgb: np.ndarray) -> None:
    """Put an (h, w, 3) float RGB image at pixel (left, top) of the figure, unresampled, under
    ``ax`` (which keeps its frame, ticks and overlays, on a transparent background).

    ``figimage`` at an integer pixel offset, not ``imshow``: the float bounds of an axes can
    make imshow's nearest-neighbour resampling shift a column."""
    fig = ax.figure
    height = round(fig.bbox.height)
    fig.figimage(np.clip(rgb, 0.0, 1.0), xo=left, yo=height - top - rgb.shape[0], origin="upper", zorder=0,
                 resize=False, interpolation="nearest", resample=False)
    ax.patch.set_visible(False)
    ax.set_zorder(1)


def show_raster(ax: Axes, panel: BevPanel, rgb: np.ndarray) -> None:
    """Show a (size, size, 3) raster (row 0 = top) filling the panel, pixel for pixel."""
    place_image(ax, panel.left, panel.top, rgb)
    ax.set_xlim(panel.x0, panel.x0 + panel.extent)
    ax.set_ylim(panel.y0, panel.y0 + panel.extent)
