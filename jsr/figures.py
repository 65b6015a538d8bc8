"""Comparison figures like the seed's Figure 1: HR | each method with its PSNR | ... | LR input, as one PNG; and the
line charts of training curves and hyperparameter trajectories (matplotlib).

Comparison panels are shown at most ``max_side`` pixels on a side (Lanczos); the optional zoom row crops the
FULL-resolution images and enlarges the crop with nearest neighbour, so pixels stay visible. The LR input is
enlarged with nearest neighbour to the HR size, so it lines up with the others."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 6  # pixels between panels
LABEL_LINES = 2
BACKGROUND = (255, 255, 255)
ZOOM_COLOUR = (255, 0, 0)


def nearest_upscale(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HWC -> (H, W) = ``size`` with nearest neighbour (blocky on purpose)."""
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.NEAREST))


def clamp_zoom(zoom: tuple[int, int, int], height: int, width: int) -> tuple[int, int, int]:
    """(y, x, size) moved / shrunk so the square lies inside a ``height`` x ``width`` image."""
    y, x, size = zoom
    size = max(1, min(size, height, width))
    return min(max(0, y), height - size), min(max(0, x), width - size), size


def _display(image: np.ndarray, max_side: int) -> Image.Image:
    im = Image.fromarray(image)
    factor = max_side / max(im.size)
    if factor < 1:
        im = im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))), Image.Resampling.LANCZOS)
    return im


def comparison_figure(
    panels: Sequence[tuple[str, np.ndarray]],
    zoom: tuple[int, int, int] | None = None,
    max_side: int = 512,
) -> np.ndarray:
    """One uint8 RGB image: ``panels`` = [(label, uint8 HxWx3 image of the SAME size)] side by side, labels above.

    ``zoom`` = (y, x, size) in the panels' pixels adds a row of enlarged crops and marks the square on the first
    panel. Labels may hold a newline (e.g. "model\\nPSNR-Y 27.45 dB").
    """
    if not panels:
        raise ValueError("a comparison figure needs at least one panel")
    height, width = panels[0][1].shape[:2]
    for label, image in panels:
        if image.shape[:2] != (height, width):
            raise ValueError(f"panel {label!r} is {image.shape[:2]}, expected {(height, width)}")
    font = ImageFont.load_default()
    line = font.getbbox("Ag")[3] + 4
    label_h = LABEL_LINES * line + 4
    shown = [_display(np.ascontiguousarray(image[..., :3]), max_side) for _, image in panels]
    pw, ph = shown[0].size
    crops = []
    if zoom is not None:
        y, x, size = clamp_zoom(zoom, height, width)
        crops = [
            nearest_upscale(np.ascontiguousarray(im[y : y + size, x : x + size, :3]), (pw, pw)) for _, im in panels
        ]
    rows_h = label_h + ph + (GAP + pw if crops else 0)
    canvas = Image.new("RGB", (len(panels) * pw + (len(panels) + 1) * GAP, rows_h + 2 * GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, ((label, _), im) in enumerate(zip(panels, shown, strict=True)):
        left = GAP + i * (pw + GAP)
        for k, text in enumerate(label.split("\n")[:LABEL_LINES]):
            draw.text((left, GAP + k * line), text, fill=(0, 0, 0), font=font)
        canvas.paste(im, (left, GAP + label_h))
        if crops:
            canvas.paste(Image.fromarray(crops[i]), (left, GAP + label_h + ph + GAP))
    if crops:  # where the zoom comes from, on the first (HR) panel
        f = pw / width
        y, x, size = clamp_zoom(zoom, height, width)
        top = GAP + label_h
        box = (GAP + x * f, top + y * f, GAP + (x + size) * f - 1, top + (y + size) * f - 1)
        draw.rectangle(box, outline=ZOOM_COLOUR, width=2)
    return np.asarray(canvas)


def line_plots(
    series: dict[str, tuple[list[float], list[float]]],
    path,
    title: str = "",
    lines: dict[str, list[tuple[float, str]]] | None = None,
    xlabel: str = "step",
) -> Path:
    """One matplotlib line chart per name (x = ``xlabel``), stacked, with optional horizontal reference ``lines``
    ({name: [(value, label)]}: a true value, a start). Written atomically as PNG; returns the path."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot as plt

    from jsr.atomic import write_file

    lines = lines or {}
    fig, axes = plt.subplots(max(1, len(series)), 1, figsize=(7, 1.9 * max(1, len(series))), squeeze=False)
    for ax, (name, (xs, ys)) in zip(axes[:, 0], series.items(), strict=False):
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
        for value, label in lines.get(name, []):
            ax.axhline(value, linestyle="--", color="black" if "true" in label else "grey", linewidth=1, label=label)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if lines.get(name):
            ax.legend(loc="best", fontsize="small")
    axes[-1, 0].set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return write_file(Path(path), lambda f: f.write(buffer.getvalue()))
