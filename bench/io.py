"""Slide I/O benchmark: whole-page decode vs streaming passes vs random windows.

Writes (once, cached in --workdir) a JPEG-tiled RGB slide with tissue-like content, tile by
tile so memory stays bounded, then measures in one run, each measurement in its own
subprocess so its peak RSS is its own (a whole-page decode would pollute the parent):

  (a)  tifffile ``page.asarray()``: decode the whole page into RAM (the baseline), with
       tifffile's default thread count and with 2 threads;
  (b0) a plain Dask-over-Zarr pass: ``da.from_zarr(zarr.open(page.aszarr()))``, 2 threads;
  (b1) ``open_slide(...).to_dask()`` pass, 2 threads;
  (b2) ``open_slide(...).iter_bands(workers=2)`` streaming pass;
  (c)  median latency of random 1536 px ``read`` windows.

Every pass reduces each chunk / band with ``max`` (touches every byte, costs ~nothing).

    .venv/bin/python bench/io.py                  # 30000 x 37000, cached in /tmp/bench-io
    .venv/bin/python bench/io.py --height 8192 --width 8192
    .venv/bin/python bench/io.py --path some/slide.tiff
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matmuls in the tile generator
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from memory import peak_rss_mb  # noqa: E402  (bench/memory.py)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TILE = 512
THREADS = 2


# --- the synthetic slide -----------------------------------------------------------------
def _interp_matrix(n_out: int, n_in: int, step: int) -> np.ndarray:
    """Linear interpolation weights from ``n_in`` coarse samples (every ``step`` px)."""
    pos = np.arange(n_out) / step
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = (pos - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] = 1 - frac
    m[np.arange(n_out), i0 + 1] = frac
    return m


def tissue_tiles(height: int, width: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Row-major 512 px RGB tiles: white glass, pink tissue islands, purple nuclei, noise.

    A smooth random field (one sample per 32 px, bilinear) decides tissue vs glass; four
    pre-made tissue and glass textures are blended by it in 16-bit integers (~5 ms a tile).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    step = 32  # the coarse tissue field has one sample per 32 px
    rows, cols = -(-height // TILE) * TILE // step, -(-width // TILE) * TILE // step
    coarse = rng.random((rows + 2, cols + 2)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, 5)
    coarse = (coarse - coarse.min()) / (np.ptp(coarse) + 1e-9)
    interp = _interp_matrix(TILE, TILE // step + 2, step)
    glass_rgb = np.array([243, 241, 246], np.float32)
    stroma_rgb = np.array([226, 158, 201], np.float32)
    nucleus_rgb = np.array([118, 72, 160], np.float32)
    tissue, glass = [], []
    for _ in range(4):
        grain = ndimage.gaussian_filter(rng.normal(0, 1, (TILE, TILE)), 2)[..., None]
        tex = stroma_rgb + 40 * grain + rng.normal(0, 7, (TILE, TILE, 3))
        nuclei = ndimage.binary_dilation(rng.random((TILE, TILE)) > 0.998, iterations=4)
        tex[nuclei] = nucleus_rgb + rng.normal(0, 10, (int(nuclei.sum()), 3))
        tissue.append(np.clip(tex, 0, 255).astype(np.int16))
        glass.append(
            np.clip(glass_rgb + rng.normal(0, 3, (TILE, TILE, 3)), 0, 255).astype(np.int16)
        )
    k = 0
    for ty in range(0, height, TILE):
        for tx in range(0, width, TILE):
            cy, cx = ty // step, tx // step
            field = (
                interp @ coarse[cy : cy + TILE // step + 2, cx : cx + TILE // step + 2] @ interp.T
            )
            t = np.clip((field - 0.45) * 2560, 0, 256).astype(np.int16)[..., None]
            g, ti = glass[k % 4], tissue[(k // 4 + k) % 4]
            k += 1
            yield (g + (((ti - g) * t) >> 8)).astype(np.uint8)


def ensure_slide(height: int, width: int, workdir: Path) -> Path:
    """The cached slide for this size (written atomically, tile by tile)."""
    import tifffile

    from pipeline.atomic import atomic_path

    path = workdir / f"bench_{height}x{width}_jpeg{TILE}.tiff"
    if path.exists():
        print(f"reusing {path} ({path.stat().st_size / 1e6:.0f} MB)")
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"writing {path} ({height} x {width}, JPEG tiles {TILE}) ...", flush=True)
    t0 = time.perf_counter()
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            tw.write(
                tissue_tiles(height, width),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                maxworkers=THREADS,
            )
    print(f"  written in {time.perf_counter() - t0:.0f} s, {path.stat().st_size / 1e6:.0f} MB")
    return path


# --- measurements (each runs in a child process) ----------------------------------------
def _threads() -> object:
    import dask

    return dask.config.set(scheduler="threads", num_workers=THREADS)


def m_import(path: Path, args: argparse.Namespace) -> dict:
    import dask.array  # noqa: F401
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    import pipeline.slides  # noqa: F401

    return {}


def m_whole_page(path: Path, args: argparse.Namespace, maxworkers: int | None = None) -> dict:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        t0 = time.perf_counter()
        arr = page.asarray(maxworkers=maxworkers)
        seconds = time.perf_counter() - t0
        return {
            "seconds": seconds,
            "check": int(arr.max()),
            "threads": maxworkers or page.maxworkers,
        }


def m_whole_page_2(path: Path, args: argparse.Namespace) -> dict:
    return m_whole_page(path, args, maxworkers=THREADS)


def m_dask_plain(path: Path, args: argparse.Namespace) -> dict:
    import dask.array as da
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tf, _threads():
        lazy = da.from_zarr(zarr.open(tf.pages[0].aszarr(), mode="r"))
        t0 = time.perf_counter()
        check = int(lazy.max().compute())
        return {"seconds": time.perf_counter() - t0, "check": check, "chunks": lazy.npartitions}


def m_to_dask(path: Path, args: argparse.Namespace) -> dict:
    from pipeline.slides import open_slide

    with open_slide(path) as slide, _threads():
        lazy = slide.to_dask()
        t0 = time.perf_counter()
        check = int(lazy.max().compute())
        return {"seconds": time.perf_counter() - t0, "check": check, "chunks": lazy.npartitions}


def m_iter_bands(path: Path, args: argparse.Namespace, backend: str = "tifffile") -> dict:
    from pipeline.slides import open_slide

    with open_slide(path, backend) as slide:
        t0 = time.perf_counter()
        check = 0
        for _y0, band in slide.iter_bands(workers=THREADS):
            check = max(check, int(band.max()))
        return {"seconds": time.perf_counter() - t0, "check": check}


def m_iter_bands_rasterio(path: Path, args: argparse.Namespace) -> dict:
    return m_iter_bands(path, args, backend="rasterio")


def m_windows(path: Path, args: argparse.Namespace, backend: str = "tifffile") -> dict:
    from pipeline.slides import open_slide

    size = 1536
    rng = np.random.default_rng(0)
    with open_slide(path, backend) as slide:
        h, w = slide.shape
        slide.read(0, 0, 16, 16)  # warm up (first zarr access)
        times = []
        for _ in range(args.windows):
            y0 = int(rng.integers(0, max(1, h - size)))
            x0 = int(rng.integers(0, max(1, w - size)))
            t0 = time.perf_counter()
            slide.read(y0, x0, size, size)
            times.append(time.perf_counter() - t0)
    return {
        "median_ms": 1000 * float(np.median(times)),
        "p90_ms": 1000 * float(np.percentile(times, 90)),
    }


def m_windows_rasterio(path: Path, args: argparse.Namespace) -> dict:
    return m_windows(path, args, backend="rasterio")


MEASURES = {
    "import": ("imports only (RSS floor of a child)", m_import),
    "whole_page": ("(a) tifffile page.asarray(), default threads", m_whole_page),
    "whole_page_2": ("(a2) tifffile page.asarray(maxworkers=2)", m_whole_page_2),
    "dask_plain": ("(b0) da.from_zarr(page.aszarr()) .max(), 2 thr", m_dask_plain),
    "to_dask": ("(b1) open_slide().to_dask() .max(), 2 thr", m_to_dask),
    "iter_bands": ("(b2) open_slide().iter_bands(workers=2)", m_iter_bands),
    "iter_bands_rasterio": ("(b3) rasterio backend iter_bands(workers=2)", m_iter_bands_rasterio),
    "windows": ("(c) random 1536 px read(), tifffile", m_windows),
    "windows_rasterio": ("(c2) random 1536 px read(), rasterio", m_windows_rasterio),
}
DEFAULT = ["import", "whole_page", "whole_page_2", "dask_plain", "to_dask", "iter_bands", "windows"]


def run_child(name: str, path: Path, args: argparse.Namespace) -> dict:
    """Run one measurement in a fresh interpreter; return its figures and peak RSS."""
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        name,
        "--path",
        str(path),
        "--windows",
        str(args.windows),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(args: argparse.Namespace) -> None:
    result = MEASURES[args.measure][1](Path(args.path), args)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Each measurement runs in its own subprocess; peak RSS is that process's.",
    )
    parser.add_argument("--height", type=int, default=30000, help="slide height (default 30000)")
    parser.add_argument("--width", type=int, default=37000, help="slide width (default 37000)")
    parser.add_argument("--path", type=Path, help="benchmark this existing slide instead")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/bench-io"),
        help="where the synthetic slide is cached (default /tmp/bench-io)",
    )
    parser.add_argument("--windows", type=int, default=50, help="random windows for (c)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(MEASURES),
        default=None,
        help=f"measurements to run (default: {' '.join(DEFAULT)})",
    )
    parser.add_argument("--measure", choices=list(MEASURES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        child_main(args)
        return

    path = args.path or ensure_slide(args.height, args.width, args.workdir)
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        h, w = page.imagelength, page.imagewidth
        mb = page.size * page.dtype.itemsize / 1e6
        desc = f"{page.compression.name} tiles {page.tilelength}x{page.tilewidth}"
    print(
        f"slide {path}: {h} x {w}, {desc}, {mb:.0f} MB decoded; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    names = args.only or DEFAULT
    results = {}
    for name in names:
        print(f"  running {name} ...", flush=True)
        results[name] = run_child(name, path, args)

    base = results.get("whole_page", {}).get("seconds")
    base2 = results.get("whole_page_2", {}).get("seconds")
    print()
    print(
        f"{'measurement':48s} {'seconds':>8s} {'MB/s':>8s} {'vs (a)':>7s} {'vs (a2)':>8s} "
        f"{'peak RSS':>9s}"
    )
    for name in names:
        r = results[name]
        label = MEASURES[name][0]
        rss = f"{r['peak_rss_mb']:.0f} MB"
        if "seconds" in r:
            rate = mb / r["seconds"]
            ra = f"{base / r['seconds']:.2f}" if base else "-"
            ra2 = f"{base2 / r['seconds']:.2f}" if base2 else "-"
            print(f"{label:48s} {r['seconds']:8.2f} {rate:8.1f} {ra:>7s} {ra2:>8s} {rss:>9s}")
        elif "median_ms" in r:
            text = f"median {r['median_ms']:.0f} ms, p90 {r['p90_ms']:.0f} ms"
            print(f"{label:48s} {text:>34s} {rss:>9s}")
        else:
            print(f"{label:48s} {'':>34s} {rss:>9s}")
    if "whole_page" in results:
        print(f"(a) used tifffile's default of {results['whole_page']['threads']} decode thread(s)")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other processes skew timings)")


if __name__ == "__main__":
    main()
