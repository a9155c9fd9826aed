"""Benchmark: tile extraction of a whole slide against reading the slide itself.

The floor for tiling is decoding the pixels. This measures, in the same run:
(1) a full sequential read of the slide through ``open_slide`` (band by band);
(2) the same pass with ``reader.iter_bands`` (the slide module's threaded full
pass) on the tiling's workers; (3) reading only the tiling's windows (the reads
the extraction does, nothing else); (4) the whole ``tiles`` stage (tissue
detection, grid, RLE truth, extraction into the Zarr tile store). It prints MB/s
(of the windows' full-resolution pixels) and tiles/s side by side with the ratio to
the reads, and the share of the slide the extraction actually decodes (each slide
block once, however many windows overlap it).

    python bench/tiles.py                       # 30000 x 37000 synthetic slide in /tmp/bench-tiles
    python bench/tiles.py --height 8000 --width 9000
    python bench/tiles.py --path slide.tiff     # a real slide (truth and centres from --polygons)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import annotations, rle  # noqa: E402
from pipeline.config import TilesConfig, TissueConfig  # noqa: E402
from pipeline.slides import open_slide  # noqa: E402
from pipeline.tiles import centred_windows, extract_tiles, select_windows, tile_grid, tile_lattice  # noqa: E402
from pipeline.tissue import detect_tissue  # noqa: E402

MB = 1e6


def synthetic_slide(workdir: Path, height: int, width: int, seed: int) -> tuple[Path, Path, Path]:
    """(slide, polygons, rle) in ``workdir``, written once and reused."""
    from pipeline.synthetic import write_synthetic_slide

    workdir.mkdir(parents=True, exist_ok=True)
    stem = workdir / f"synthetic-{height}x{width}-s{seed}"
    slide, polygons = stem.with_suffix(".tiff"), stem.with_suffix(".json")
    rle_path = stem.with_suffix(".rle")
    if not (slide.exists() and polygons.exists()):
        t = time.perf_counter()
        print(f"writing {slide} ...", flush=True)
        geoms = write_synthetic_slide(slide, height, width, seed)
        annotations.write_geojson(geoms, polygons)
        print(f"  {time.perf_counter() - t:.1f} s", flush=True)
    if not rle_path.exists():
        geoms = annotations.read_polygons(polygons)
        rle_path.write_text(annotations.polygons_to_rle(geoms, (height, width)))
    return slide, polygons, rle_path


def sequential_read(path: Path, backend: str, band: int) -> tuple[float, int]:
    """Seconds and bytes to read the whole slide band by band in one thread."""
    t = time.perf_counter()
    nbytes = 0
    with open_slide(path, backend=backend) as reader:
        height, width = reader.shape
        for y0 in range(0, height, band):
            nbytes += reader.read(y0, 0, min(band, height - y0), width).nbytes
    return time.perf_counter() - t, nbytes


def parallel_read(path: Path, backend: str, workers: int) -> tuple[float, int]:
    """Seconds and bytes to stream the whole slide with the slide module's threaded band reader."""
    t = time.perf_counter()
    nbytes = 0
    with open_slide(path, backend=backend) as reader:
        for _y0, band in reader.iter_bands(0, workers=workers):
            nbytes += band.nbytes
    return time.perf_counter() - t, nbytes


def window_read(reader, windows, size: int, workers: int) -> tuple[float, int]:
    """Seconds and bytes to only read (decode) the tiling's windows on ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        sizes = pool.map(lambda yx: reader.read(int(yx[0]), int(yx[1]), size, size).nbytes, windows)
        nbytes = sum(sizes)
    return time.perf_counter() - t, nbytes


def decoded_share(reader, windows, size: int, lattice: int) -> float:
    """Share of the slide's pixels in the blocks the extraction decodes once (windows off the
    lattice are decoded on their own and counted as their window)."""
    from pipeline.reduced import ReducedSlide

    height, width = (int(n) for n in reader.shape)
    blocks = ReducedSlide(reader, lattice, pool=None)  # only its block geometry is used
    keys, own = set(), 0
    for y0, x0 in zip(windows["y0"].tolist(), windows["x0"].tolist(), strict=True):
        if y0 % lattice or x0 % lattice:
            own += size * size
            continue
        keys.update(blocks.block_keys(y0, x0, size))
    area = sum(
        max(0, min((i + 1) * blocks.block_h, height) - i * blocks.block_h)
        * max(0, min((j + 1) * blocks.block_w, width) - j * blocks.block_w)
        for i, j in keys
    )
    return (area + own) / (height * width)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", type=Path, help="slide to tile (default: a synthetic one in --workdir)")
    p.add_argument("--polygons", type=Path, help="glomerulus polygons of --path (truth and centres)")
    p.add_argument("--height", type=int, default=30000)
    p.add_argument("--width", type=int, default=37000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench-tiles"))
    p.add_argument("--backend", default="tifffile")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--scheduler", default="threads")
    p.add_argument("--size", type=int, default=1536)
    p.add_argument("--stride", type=int, default=None, help="default: --size")
    p.add_argument("--out-size", type=int, default=512)
    p.add_argument("--band", type=int, default=512, help="rows per read of the sequential baseline")
    p.add_argument("--min-tissue", type=float, default=TilesConfig.min_tissue)
    args = p.parse_args(argv)

    rle_text = None
    polygons = args.polygons
    if args.path is None:
        slide, polygons, rle_path = synthetic_slide(args.workdir, args.height, args.width, args.seed)
        rle_text = rle_path.read_text().strip()
    else:
        slide = args.path
    cfg = TilesConfig(
        size=args.size,
        stride=args.stride or args.size,
        out_size=args.out_size,
        min_tissue=args.min_tissue,
        scheduler=args.scheduler,
        workers=args.workers,
    )
    with open_slide(slide, backend=args.backend) as reader:
        shape = tuple(reader.shape)
    slide_mb = shape[0] * shape[1] * 3 / MB
    print(
        f"slide {slide} {shape[0]} x {shape[1]} ({slide_mb:.0f} MB decoded), {args.workers} workers, "
        f"{os.cpu_count()} CPUs (shared: other jobs may contend)",
        flush=True,
    )

    t_seq, b_seq = sequential_read(slide, args.backend, band=args.band)
    print(f"sequential read: {t_seq:.1f} s", flush=True)
    t_par, b_par = parallel_read(slide, args.backend, args.workers)
    print(f"parallel read: {t_par:.1f} s", flush=True)

    t0 = time.perf_counter()
    with open_slide(slide, backend=args.backend) as reader:
        tissue = detect_tissue(reader, TissueConfig())
        t_tissue = time.perf_counter() - t0
        truth, centres = None, []
        if rle_text is not None:
            runs = rle.parse(rle_text, shape)

            def truth(y0, x0, h, w):
                return rle.decode_window(runs, shape, y0, x0, h, w)

        geoms = annotations.read_polygons(polygons) if polygons is not None else None
        if geoms is not None:
            centres = annotations.centres(geoms)
            if truth is None:
                truth = annotations.as_index(geoms)
        grid = tile_grid(tissue, shape, cfg)
        windows = select_windows(grid, centred_windows(centres, shape, cfg.size, tile_lattice(cfg)), tissue, cfg)
        decoded = decoded_share(reader, windows, cfg.size, tile_lattice(cfg))
        t_windows, b_windows = window_read(
            reader, list(zip(windows["y0"], windows["x0"], strict=True)), cfg.size, args.workers
        )
        print(f"window read: {t_windows:.1f} s", flush=True)
        t1 = time.perf_counter()
        out = args.workdir / "tiles.zarr"
        index = extract_tiles(reader, truth, windows, out, cfg, "bench")
        t_extract = time.perf_counter() - t1
    t_stage = time.perf_counter() - t0 - t_windows
    n = len(index)
    window_mb = n * cfg.size * cfg.size * 3 / MB
    store_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / MB

    rows = [
        ("read slide, sequential", t_seq, b_seq / MB, None),
        (f"read slide, iter_bands {args.workers} threads", t_par, b_par / MB, None),
        ("tissue detection", t_tissue, None, None),
        (f"read the windows only, {args.workers} threads", t_windows, b_windows / MB, n),
        ("extract tiles (windows decoded)", t_extract, window_mb, n),
        ("tiles stage total", t_stage, window_mb, n),
    ]
    print()
    print(
        f"{len(grid)} grid + {len(windows) - len(grid)} centred -> {n} tiles of {cfg.size} px "
        f"-> {cfg.out_size} px (windows: {window_mb / slide_mb:.0%} of the slide's pixels; decoded once: "
        f"{decoded:.0%}); "
        f"store {store_mb:.0f} MB, {int((index['positive'] > 0).sum())} positive tiles"
    )
    print(
        f"{'step':36s} {'seconds':>8s} {'MB/s':>8s} {'tiles/s':>8s} {'vs seq read':>12s} {'vs band read':>13s}"
    )
    seq_rate, par_rate = b_seq / MB / t_seq, b_par / MB / t_par
    for name, secs, mb, tiles in rows:
        rate = mb / secs if mb is not None else None
        cells = [
            f"{rate:8.1f}" if rate is not None else f"{'':8s}",
            f"{tiles / secs:8.2f}" if tiles else f"{'':8s}",
            f"{rate / seq_rate:11.2f}x" if rate is not None else f"{'':12s}",
            f"{rate / par_rate:12.2f}x" if rate is not None else f"{'':13s}",
        ]
        print(f"{name:36s} {secs:8.1f} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
