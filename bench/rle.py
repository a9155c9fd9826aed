"""Benchmark: streaming RLE encoder vs the two Kaggle formulas, on a slide-sized mask.

Builds a (default 30000 x 37000) uint8 mask with ~3 % foreground (discs of
radius 80-150 px, two of them touching the first and the last pixel) in a .npy
file and a chunked Zarr copy, then runs each method in its own fresh (spawned)
process, so time and peak memory are per method:

* ``classic``: ``img.T.flatten()``, pad with 0, ``np.where`` on the differences;
* ``rle_encode_less_memory``: the same without padding, zeroing the first and
  last pixel (wrong for objects touching them);
* ``pipeline.rle.encode`` on the mask in RAM, and streamed from the Zarr array;
* floors: one ``np.count_nonzero`` pass over the mask in RAM, and a read of the
  Zarr array strip by strip with a ``count_nonzero`` per strip.

Peak memory is the process's peak RSS during the method (the kernel's peak mark,
reset after loading the mask) minus its RSS after the mask was loaded: the mask
itself, 1.1 GB at full size, is not counted. Methods
under ``--repeat-below`` seconds are repeated and the best time is shown.

    .venv/bin/python bench/rle.py                      # full size (needs ~11 GB RAM for classic)
    .venv/bin/python bench/rle.py --height 6000 --width 7000
    .venv/bin/python bench/rle.py --skip classic       # when RAM is short
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import rle_encode, rle_encode_less_memory  # noqa: E402  (the Kaggle formulas)
from memory import peak_rss_mb, reset_peak_rss_mb  # noqa: E402

# ----------------------------------------------------------------- data


def make_mask(path: Path, height: int, width: int, fraction: float, seed: int) -> float:
    """Write the disc mask to a .npy file, disc by disc; returns the foreground fraction."""
    rng = np.random.default_rng(seed)
    mask = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(height, width)
    )
    mean_area = np.pi * (150**3 - 80**3) / (3 * 70)  # E[pi r^2], r uniform in [80, 150]
    n = max(1, int(round(fraction * height * width / mean_area * 1.03)))
    centres = [
        (0, 0),
        (height - 1, width - 1),
    ]  # the border cases less_memory gets wrong
    centres += [
        (int(rng.integers(0, height)), int(rng.integers(0, width)))
        for _ in range(n - 2)
    ]
    for cy, cx in centres:
        r = int(rng.integers(80, 151))
        y0, y1 = max(cy - r, 0), min(cy + r + 1, height)
        x0, x1 = max(cx - r, 0), min(cx + r + 1, width)
        yy, xx = np.ogrid[y0 - cy : y1 - cy, x0 - cx : x1 - cx]
        mask[y0:y1, x0:x1] |= (yy * yy + xx * xx <= r * r).astype(np.uint8)
    mask.flush()
    fg = sum(int(np.count_nonzero(mask[y : y + 4096])) for y in range(0, height, 4096))
    del mask
    return fg / (height * width)


def make_zarr(npy: Path, out: Path, chunk: int) -> None:
    import zarr

    mask = np.load(npy, mmap_mode="r")
    z = zarr.create_array(
        store=str(out), shape=mask.shape, chunks=(chunk, chunk), dtype="uint8"
    )
    for x in range(0, mask.shape[1], chunk):
        z[:, x : x + chunk] = np.asarray(mask[:, x : x + chunk])


# ----------------------------------------------------------------- one method in one process


def _zarr_floor(z) -> int:
    """Read the Zarr mask exactly as encode() does (same blocks, same read-ahead), count only."""
    from pipeline.rle import _read_ahead, _row_bounds, _strip_bounds

    strips = _strip_bounds(z, None)
    rows = _row_bounds(z, max(x1 - x0 for x0, x1 in strips))
    boxes = [(y0, y1, x0, x1) for x0, x1 in strips for y0, y1 in rows]
    return sum(int(np.count_nonzero(b)) for b in _read_ahead(z, boxes))


def _child(
    method: str, npy: str, zarr_path: str, repeats: int, repeat_below: float, conn
) -> None:
    from pipeline import rle

    if method.startswith("zarr"):
        import zarr

        data = zarr.open_array(zarr_path, mode="r")
    else:
        data = np.load(npy)  # in RAM: counted in the baseline, not in the method's peak
    funcs = {
        "classic": rle_encode,
        "rle_encode_less_memory": rle_encode_less_memory,
        "encode": rle.encode,
        "count_nonzero": np.count_nonzero,
        "zarr encode": rle.encode,
        "zarr read floor": _zarr_floor,
    }
    func = funcs[method]
    baseline = reset_peak_rss_mb()
    times = []
    result = None
    for i in range(repeats):
        t0 = time.perf_counter()
        result = func(data)
        times.append(time.perf_counter() - t0)
        if times[-1] > repeat_below:
            break
    conn.send(
        (
            min(times),
            len(times),
            peak_rss_mb() - baseline,
            result if isinstance(result, str) else None,
        )
    )
    conn.close()


def run_method(
    method: str, npy: Path, zarr_path: Path, repeats: int, repeat_below: float
):
    ctx = mp.get_context("spawn")  # fresh process: its max RSS is this method's alone
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child,
        args=(method, str(npy), str(zarr_path), repeats, repeat_below, send),
    )
    proc.start()
    send.close()
    try:
        out = recv.recv()
    except EOFError:
        out = None
    proc.join()
    if out is None:
        raise RuntimeError(
            f"{method}: child process died (exit code {proc.exitcode}; out of memory?)"
        )
    return out


def _mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=30000)
    ap.add_argument("--width", type=int, default=37000)
    ap.add_argument(
        "--fraction", type=float, default=0.03, help="target foreground fraction"
    )
    ap.add_argument("--chunk", type=int, default=4096, help="Zarr chunk size (square)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for fast methods")
    ap.add_argument(
        "--repeat-below",
        type=float,
        default=3.0,
        help="repeat only methods faster than this (s)",
    )
    ap.add_argument(
        "--skip", action="append", default=[], help="method to skip (repeatable)"
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to write the mask (default: a temp dir)",
    )
    args = ap.parse_args()

    from pipeline import rle

    work = Path(tempfile.mkdtemp(prefix="bench_rle_", dir=args.workdir))
    npy, zarr_path = work / "mask.npy", work / "mask.zarr"
    try:
        t0 = time.perf_counter()
        fg = make_mask(npy, args.height, args.width, args.fraction, args.seed)
        t1 = time.perf_counter()
        make_zarr(npy, zarr_path, args.chunk)
        t2 = time.perf_counter()
        mb = args.height * args.width / 2**20
        print(
            f"mask {args.height} x {args.width} uint8 ({mb:.0f} MB), foreground {fg:.2%}; "
            f"made in {t1 - t0:.1f} s, Zarr copy ({args.chunk}x{args.chunk} chunks, "
            f"{sum(f.stat().st_size for f in zarr_path.rglob('*') if f.is_file()) / 2**10:.0f} kB on disk) "
            f"in {t2 - t1:.1f} s"
        )
        print(f"CPUs: {os.cpu_count()} (shared: other processes may add noise)\n")

        methods = [
            "classic",
            "rle_encode_less_memory",
            "encode",
            "count_nonzero",
            "zarr encode",
            "zarr read floor",
        ]
        results = {}
        for m in methods:
            if m in args.skip:
                continue
            need = mb / 1024 * 9.5 if m == "classic" else 0
            if need and _mem_available_gb() < need + 1:
                print(
                    f"skipping {m}: needs ~{need:.1f} GB, {_mem_available_gb():.1f} GB available"
                )
                continue
            results[m] = run_method(m, npy, zarr_path, args.repeats, args.repeat_below)
            print(f"  {m}: {results[m][0]:.3f} s", flush=True)

        ref_name = "classic" if "classic" in results else None
        ref = results[ref_name][3] if ref_name else None
        base = results.get("rle_encode_less_memory")
        print()
        print(
            f"{'method':<26} {'seconds':>9} {'runs':>5} {'peak MB':>9} {'vs less_memory':>16}  output"
        )
        for m, (sec, n, peak, text) in results.items():
            if not base:
                ratio = "-"
            elif sec <= base[0]:
                ratio = f"{base[0] / sec:.1f}x faster"
            else:
                ratio = f"{sec / base[0]:.1f}x slower"
            if text is None:
                check = "(floor: no output)"
            elif ref is None:
                check = f"{len(text):,} chars (classic not run)"
            elif text == ref:
                check = "identical to classic"
            else:
                lost = rle.area(ref) - rle.area(text)
                check = f"DIFFERS from classic ({lost:+,} px missing)"
            print(f"{m:<26} {sec:>9.3f} {n:>5} {peak:>9.0f} {ratio:>16}  {check}")
        if ref is None and "encode" in results and "zarr encode" in results:
            same = results["encode"][3] == results["zarr encode"][3]
            print(f"\nencode (numpy) == encode (zarr): {same}")
        print(
            "\npeak MB = peak RSS of the method's process minus its RSS after loading the mask "
            "(numpy methods hold the mask in RAM; Zarr methods read it from disk strip by strip)."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
