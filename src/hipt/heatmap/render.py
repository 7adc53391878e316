"""Colour overlays on the thumbnail, a legend panel (matplotlib Agg) and side-by-side crops."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageDraw, ImageFont

from hipt.heatmap.config import RenderConfig
from hipt.io import atomic_write_bytes

STRIP_ROWS = 512  # canvas rows blended at a time (bounds memory on 4,700-px canvases)
CAPTION_PX = 18
_SCALE_BARS_UM = (5000, 2000, 1000, 500, 200, 100, 50, 20, 10)


def lut(cfg: RenderConfig) -> np.ndarray:
    """256 x 3 float colours of ``cfg.cmap`` (lightened ``c / 2 + 0.5`` if asked, as official)."""
    colours = colormaps[cfg.cmap](np.linspace(0.0, 1.0, 256))[:, :3]
    return colours / 2.0 + 0.5 if cfg.lighten else colours


def blend(thumb: np.ndarray, values: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """Blend percentile ``values`` (``0..100``, NaN = not drawn) over an RGB image.

    Args:
        thumb: uint8 ``[H, W, 3]``.
        values: ``[H, W]`` percentiles.
        cfg: colormap, alpha and threshold.

    Returns:
        uint8 ``[H, W, 3]``; pixels without a value (or below the threshold) keep the image.
    """
    vals = np.asarray(values, dtype=np.float32)
    drawn = ~np.isnan(vals)
    if cfg.threshold is not None:
        drawn &= np.nan_to_num(vals, nan=-1.0) >= cfg.threshold
    idx = np.clip(np.nan_to_num(vals, nan=0.0) * 2.55, 0, 255).astype(np.uint8)
    colour = lut(cfg)[idx]
    base = thumb.astype(np.float32) / 255.0
    mixed = base * (1.0 - cfg.alpha) + colour * cfg.alpha
    out = np.where(drawn[..., None], mixed, base)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _scale_bar(px_per_um: float, max_px: float) -> tuple[float, str] | None:
    for um in _SCALE_BARS_UM:
        if um * px_per_um <= max_px:
            label = f"{um // 1000} mm" if um >= 1000 else f"{um} µm"
            return um * px_per_um, label
    return None


def legend_panel(
    height: int, cfg: RenderConfig, title: str, lines: Sequence[str], canvas_mpp: float
) -> np.ndarray:
    """Legend drawn with matplotlib Agg: title, colour bar (percentiles), notes, scale bar.

    The scale bar is drawn at the canvas's own pixel scale, so it measures the map beside it.

    Returns:
        uint8 ``[height, cfg.panel_px, 3]``.
    """
    width = cfg.panel_px
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    fy = lambda px: 1.0 - px / height  # noqa: E731 - top-down pixel -> figure fraction
    fig.text(10 / width, fy(12), title, fontsize=10, weight="bold", va="top", wrap=True)
    bar_h = min(260, max(120, height - 220))
    cax = fig.add_axes((12 / width, fy(64 + bar_h), 18 / width, bar_h / height))
    cmap = ListedColormap(lut(cfg))
    sm = ScalarMappable(norm=Normalize(0, 100), cmap=cmap)
    cbar = fig.colorbar(sm, cax=cax, ticks=[0, 25, 50, 75, 100])
    cbar.set_label("attention percentile", fontsize=8)
    cbar.ax.tick_params(labelsize=8)
    if cfg.threshold is not None:
        cax.axhline(cfg.threshold, color="black", linewidth=1)
    y = 76 + bar_h
    for line in lines:
        fig.text(10 / width, fy(y), line, fontsize=7.5, va="top")
        y += 13
    bar = _scale_bar(1.0 / canvas_mpp, width - 40)
    if bar is not None and y + 40 < height:
        length, label = bar
        y += 12
        fig.add_artist(
            Line2D([10 / width, (10 + length) / width], [fy(y), fy(y)], color="black", linewidth=3)
        )
        fig.text(10 / width, fy(y + 6), f"{label} (on the map)", fontsize=7.5, va="top")
    agg = FigureCanvasAgg(fig)
    agg.draw()
    rgb = np.asarray(agg.buffer_rgba())[..., :3]
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
    out[:h, :w] = rgb[:h, :w]  # Agg may round the figure size by a pixel
    return out


def render_overlay(
    thumb: np.ndarray,
    values: np.ndarray,
    cfg: RenderConfig,
    title: str,
    lines: Sequence[str],
    canvas_mpp: float,
) -> np.ndarray:
    """The full PNG picture: the blended map at canvas size, legend panel on the right.

    The map occupies pixels ``[0:H, 0:W]`` exactly (same geometry as the canvas); the image is
    ``max(H, cfg.min_height_px)`` tall (white below a short map) and ``W + panel_px`` wide.
    """
    h, w = values.shape
    total_h = max(h, cfg.min_height_px)
    out = np.full((total_h, w + cfg.panel_px, 3), 255, dtype=np.uint8)
    for r0 in range(0, h, STRIP_ROWS):
        r1 = min(h, r0 + STRIP_ROWS)
        out[r0:r1, :w] = blend(thumb[r0:r1], np.asarray(values[r0:r1]), cfg)
    out[:, w:] = legend_panel(total_h, cfg, title, lines, canvas_mpp)
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """Encode uint8 RGB as PNG without timestamps (same pixels -> same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write ``image`` as PNG atomically; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(image))
    return path


def cells_to_image(cells: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``[S, S]`` map to ``[side, side]`` (pixel centres)."""
    n = cells.shape[-1]
    idx = np.minimum((np.arange(side) + 0.5) * n / side, n - 1).astype(np.int64)
    return cells[np.ix_(idx, idx)]


def resize_rgb(image: np.ndarray, side: int) -> np.ndarray:
    """Area-resize a square uint8 RGB image to ``side`` pixels."""
    if image.shape[0] == side and image.shape[1] == side:
        return image
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BOX))


def side_by_side(panels: Sequence[tuple[np.ndarray, str]], gap: int = 6) -> np.ndarray:
    """Images of equal height in a row, each with a caption strip above it."""
    font = ImageFont.load_default()
    h = max(p.shape[0] for p, _ in panels)
    w = sum(p.shape[1] for p, _ in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (w, h + CAPTION_PX), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for image, caption in panels:
        canvas.paste(Image.fromarray(image), (x, CAPTION_PX))
        draw.text((x + 2, 3), caption, fill=(0, 0, 0), font=font)
        x += image.shape[1] + gap
    return np.asarray(canvas)


def crop_panels(
    image: np.ndarray, maps: Sequence[tuple[np.ndarray, str]], side: int, cfg: RenderConfig
) -> np.ndarray:
    """A crop next to its maps: ``[image | map 1 over image | map 2 over image | ...]``.

    Args:
        image: uint8 square RGB crop (region or patch at the store's resolution).
        maps: ``([S, S] cell map, caption)`` covering the crop.
        side: pixel side of each panel.
        cfg: colours.
    """
    base = resize_rgb(image, side)
    panels: list[tuple[np.ndarray, str]] = [(base, "tissue")]
    for cells, caption in maps:
        panels.append((blend(base, cells_to_image(cells, side), cfg), caption))
    return side_by_side(panels)
