"""Figures and summaries: training curves, glomerulus sizes, prediction overlays, an evaluation summary.

Everything is drawn at thumbnail resolution: RLE masks are rasterised straight
from their runs at the thumbnail's sampling points, so no full-resolution mask is
ever built. Outputs are written atomically (matplotlib on the Agg backend).
"""

from __future__ import annotations

import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.errors import DataError
from pipeline.progress import get_logger

log = get_logger(__name__)

#: Outline colours (RGB): cyan and yellow both stand out on H&E pink and on glass.
PRED_COLOUR = (0, 220, 255)
TRUTH_COLOUR = (255, 215, 0)


# ---------------------------------------------------------------- curves


def plot_curves(metrics_csv: str | os.PathLike[str], out_png: str | os.PathLike[str]) -> None:
    """Loss (left) and Dice (right) per epoch from a training ``metrics.csv``.

    Every column whose name contains ``loss`` goes on the left panel and every one
    containing ``dice`` on the right; the x axis is ``epoch`` when present.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(metrics_csv)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(path, "metrics file not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(path, f"cannot read metrics CSV: {err}") from err
    x = df["epoch"] if "epoch" in df.columns else pd.Series(np.arange(1, len(df) + 1), name="epoch")
    loss_cols = [c for c in df.columns if "loss" in c.lower()]
    dice_cols = [c for c in df.columns if "dice" in c.lower()]
    if not loss_cols and not dice_cols:
        raise DataError(path, f"no loss or dice column among {list(df.columns)}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, cols, title in ((axes[0], loss_cols, "loss"), (axes[1], dice_cols, "Dice")):
        for c in cols:
            ax.plot(x, df[c], marker="o", markersize=3, label=c)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if cols:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {title} column", ha="center", va="center", transform=ax.transAxes)
    if dice_cols:
        axes[1].set_ylim(0, 1)
    if "val_dice" in df.columns and df["val_dice"].notna().any():
        axes[1].axvline(x[df["val_dice"].idxmax()], color="grey", ls=":", label="best (kept)")
        axes[1].legend()
    _save_figure(fig, out_png)
    plt.close(fig)


def plot_sizes(areas: Sequence[float], unit: str, title: str, out_png: str | os.PathLike[str]) -> None:
    """Histogram of object areas in ``unit`` with the median marked (``title`` says what); atomic.

    An empty list still gives a figure ("no glomeruli predicted"), so the report has one per slide.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray([a for a in areas if a is not None and np.isfinite(a)], np.float64)
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    if values.size:
        bins = int(min(40, max(5, math.ceil(math.sqrt(values.size)))))
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
        median = float(np.median(values))
        ax.axvline(median, color="black", ls="--", label=f"median {median:,.0f} {unit.split()[0]}")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no glomeruli predicted", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"area ({unit})")
    ax.set_ylabel("glomeruli")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _save_figure(fig, out_png)
    plt.close(fig)


def _save_figure(fig: Any, out_png: str | os.PathLike[str]) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


# ---------------------------------------------------------------- overlays


def rle_to_thumbnail(
    rle: str | np.ndarray | None, slide_shape: tuple[int, int], thumb_shape: tuple[int, int]
) -> np.ndarray:
    """bool (th, tw) mask: the RLE sampled at the centre pixel of each thumbnail cell.

    Pure run arithmetic: the sampled full-res pixels are (column-major) indices
    looked up among the run starts with ``searchsorted``; memory is the thumbnail.
    """
    from pipeline.rle import parse

    th, tw = thumb_shape
    height, width = slide_shape
    if rle is None:
        return np.zeros((th, tw), bool)
    runs = parse(rle, (height, width)) if isinstance(rle, str) else np.asarray(rle, np.int64).reshape(-1, 2)
    if len(runs) == 0:
        return np.zeros((th, tw), bool)
    rows = np.minimum(((np.arange(th) + 0.5) * height / th).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(tw) + 0.5) * width / tw).astype(np.int64), width - 1)
    index = cols[None, :] * height + rows[:, None]  # (th, tw) column-major flat indices
    starts, ends = runs[:, 0], runs[:, 0] + runs[:, 1]
    k = np.searchsorted(starts, index, side="right") - 1
    return (k >= 0) & (index < ends[np.maximum(k, 0)])


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of ``mask`` (inside edge), ``width`` px thick."""
    if not mask.any():
        return mask.copy()
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def overlay_image(
    thumbnail: np.ndarray,
    pred_rle: str | None,
    truth_rle: str | None,
    slide_shape: tuple[int, int],
    width: int | None = None,
) -> np.ndarray:
    """The thumbnail with prediction (cyan) and truth (yellow) outlines, uint8 RGB."""
    image = np.array(thumbnail, dtype=np.uint8, copy=True)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    th, tw = image.shape[:2]
    if width is None:
        width = max(1, round(max(th, tw) / 600))
    truth = rle_to_thumbnail(truth_rle, slide_shape, (th, tw)) if truth_rle is not None else None
    pred = rle_to_thumbnail(pred_rle, slide_shape, (th, tw))
    if truth is not None:
        image[outline(truth, width)] = TRUTH_COLOUR
    image[outline(pred, width)] = PRED_COLOUR
    return image


def _legend(image: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """Append a dark strip with coloured labels under the image (PIL's default font)."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    band = 16
    canvas = Image.new("RGB", (w, h + band), (40, 40, 40))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 4
    for text, colour in entries:
        draw.rectangle([x, h + 4, x + 8, h + 12], fill=colour)
        draw.text((x + 12, h + 2), text, fill=colour)
        x += 12 + 7 * len(text) + 12
    return np.asarray(canvas)


def overlay_png(
    thumbnail: np.ndarray,
    pred_rle: str | None,
    truth_rle: str | None,
    slide_shape: tuple[int, int],
    out_png: str | os.PathLike[str],
) -> None:
    """Write the thumbnail with prediction (cyan) and truth (yellow, if given) outlined.

    The RLEs are rasterised at the thumbnail's resolution from their runs (see
    :func:`rle_to_thumbnail`); a legend strip is added below. Atomic.
    """
    from PIL import Image

    image = overlay_image(thumbnail, pred_rle, truth_rle, slide_shape)
    entries = [("prediction", PRED_COLOUR)] + ([("truth", TRUTH_COLOUR)] if truth_rle is not None else [])
    image = _legend(image, entries)
    with atomic_path(out_png) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


# ---------------------------------------------------------------- summary


def write_summary(
    scores: pd.DataFrame,
    out_path: str | os.PathLike[str],
    images: Mapping[str, str | os.PathLike[str]] | None = None,
    title: str = "Evaluation",
) -> None:
    """Per-slide Dice table (+ mean) as Markdown (``.md``) or HTML (``.html``), with overlay links.

    ``scores`` needs columns ``id`` and ``dice``; other columns are shown as they
    are. ``images`` maps a slide id to its overlay PNG, linked relative to the output.
    """
    if "id" not in scores.columns or "dice" not in scores.columns:
        raise DataError(None, f"summary needs columns id and dice, got {list(scores.columns)}")
    out_path = Path(out_path)
    images = dict(images or {})
    df = scores.copy()
    valid = pd.to_numeric(df["dice"], errors="coerce")
    mean = float(valid.mean()) if valid.notna().any() else float("nan")

    def rel(p: str | os.PathLike[str]) -> str:
        return os.path.relpath(Path(p), out_path.parent)

    cols = list(df.columns)
    if out_path.suffix.lower() in (".html", ".htm"):
        buf = io.StringIO()
        buf.write(f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>")
        buf.write("<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style></head><body>\n")
        buf.write(f"<h1>{html.escape(title)}</h1>\n<p>Mean Dice over {int(valid.notna().sum())} slide(s): "
                  f"<b>{mean:.4f}</b></p>\n<table>\n<tr>")
        buf.write("".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "<th>overlay</th></tr>\n")
        for _, row in df.iterrows():
            cells = "".join(f"<td>{html.escape(_fmt(row[c]))}</td>" for c in cols)
            img = images.get(str(row["id"]))
            link = f"<a href='{html.escape(rel(img))}'><img src='{html.escape(rel(img))}' height='120'></a>" if img else ""
            buf.write(f"<tr>{cells}<td>{link}</td></tr>\n")
        buf.write("</table></body></html>\n")
        text = buf.getvalue()
    else:
        lines = [f"# {title}", "", f"Mean Dice over {int(valid.notna().sum())} slide(s): **{mean:.4f}**", ""]
        lines.append("| " + " | ".join(map(str, cols)) + " | overlay |")
        lines.append("|" + "---|" * (len(cols) + 1))
        for _, row in df.iterrows():
            img = images.get(str(row["id"]))
            link = f"![{row['id']}]({rel(img)})" if img else ""
            lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + f" | {link} |")
        text = "\n".join(lines) + "\n"
    write_text_atomic(out_path, text)


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.4f}"
    return str(value)
