"""Benchmark: whole-slide prediction, streamed band consensus vs the usual notebook approach.

Measured in the same run, each method in its own process (so peak RSS is its own):

* ``pipeline``: :func:`pipeline.predict.predict_slide` (prefetching reader threads,
  model, band accumulators flushed to a low-res Zarr store) + :func:`encode_prediction`
  (column strips upsampled straight into the streaming RLE encoder);
* ``notebook``: the HuBMAP-notebook way: full-resolution float32 ``preds`` and
  ``counts`` arrays (H x W x 4 B each), each window's 512 px prediction upsampled to
  1536 px and added in, then ``preds / counts > thr`` and ``rle_encode_less_memory``.

Both run the same model over the same windows (the pipeline's grid over tissue), so
the model time is the same and the difference is the pipeline's own overhead. Peak
RSS is VmHWM; "setup" is the RSS once the model is built and the slide opened, and
the figure that must stay small is peak - setup. The notebook needs ~11 B per slide
pixel; when that does not fit in the available memory it runs on a centre crop that
does (said in the output), and the pipeline is run on the same crop for the ratios.

``--data-path`` measures the data path alone instead (issue 13), each in its own process,
on the same slide in the same run: the raw decode floor (every level-0 tile decoded once by
N threads, no assembly), one sequential decode pass with the project's reader
(``iter_bands``), and whole-slide prediction with the **null model** (no network: a fixed
function of the input, so only reading, reducing, batching and accumulating are timed),
decode-once at each ``--workers-scaling`` count and, with ``--per-window``, the old data
path that reads and reduces every window on its own.

    python bench/predict.py                              # 30000 x 37000 synthetic slide, tiny model
    python bench/predict.py --model unet-resnet18 --crop 6144
    python bench/predict.py --path slide.tiff --no-baseline
    python bench/predict.py --data-path --workers-scaling 1 2 --per-window
    python bench/predict.py --data-path --with-store-cost     # how much of it is writing the Zarr map
    python bench/predict.py --data-path --device cuda --model unet-resnet18   # GPU-busy fraction
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from baselines import rle_encode_less_memory  # noqa: E402  (the notebooks' encoder)
from memory import status_kb  # noqa: E402

GB = 1024**3
NOTEBOOK_BYTES_PER_PX = 11.0  # preds + counts (8 B) + bool mask, transposed copy, comparison temp


# ---------------------------------------------------------------- helpers


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class RegionReader:
    """A window of a slide seen as a slide (for crops): shape + read, offsets added."""

    def __init__(self, reader, y0: int, x0: int, height: int, width: int) -> None:
        self.reader, self.y0, self.x0 = reader, y0, x0
        self.shape = (height, width)
        self.path = reader.path

    def read(self, y0, x0, height, width, level=0, fill=255):
        # keep reads inside the region: outside it is padding, as at a slide border
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + height, self.shape[0]), min(x0 + width, self.shape[1])
        if (ya, xa, yb, xb) == (y0, x0, y0 + height, x0 + width):
            return self.reader.read(self.y0 + y0, self.x0 + x0, height, width, fill=fill)
        out = np.full((height, width, 3), fill, np.uint8)
        if ya < yb and xa < xb:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = self.reader.read(self.y0 + ya, self.x0 + xa, yb - ya, xb - xa)
        return out


def build_model(kind: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "null":
        # no network: a fixed function of the input, so only the data path is timed. One
        # channel (green: stain low, glass high), not the channel mean: a reduction over the
        # channels of a channels-last batch is itself ~24 ms per batch of 8 on 2 cores (2.3 s
        # of a 30000 x 37000 slide), model compute that the data path must not be charged for
        class Null(nn.Module):
            def forward(self, x):
                return 4.0 * (1.85 - x[:, 1:2])

        return Null().eval()
    if kind == "tiny":
        # a fixed "blurred darkness" conv net, far cheaper than a U-Net on CPU: it
        # shows the pipeline's own costs, and its outputs are far from 0.5 except at
        # edges, so the two methods' masks can be compared
        class Tiny(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.grey = nn.Conv2d(3, 1, 1)
                self.blur = nn.Conv2d(1, 1, 9, padding=4, bias=False)
                with torch.no_grad():
                    self.grey.weight.fill_(-4.0 / 3)  # logit 4 * (1.85 - mean normalised value):
                    self.grey.bias.fill_(7.4)  # stain (~1.4) positive, glass (~2.2) negative
                    self.blur.weight.fill_(1.0 / 81)

            def forward(self, x):
                return self.blur(self.grey(x))

        model = Tiny()
    else:
        import segmentation_models_pytorch as smp

        model = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=1)
    return model.eval()


# ---------------------------------------------------------------- workers (one process each)


def worker(args: argparse.Namespace) -> dict:
    import torch

    from pipeline import predict as P
    from pipeline.config import PredictConfig
    from pipeline.encode import encode_prediction
    from pipeline.slides import open_slide
    from pipeline.tissue import TissueMask, load_tissue

    torch.set_num_threads(args.threads)
    y0, x0, h, w = args.region
    cfg = PredictConfig(batch_size=args.batch_size, prefetch=2, workers=args.workers, tissue_only=True, device=args.device)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if args.worker == "floor":
        return decode_floor(Path(args.slide), args.workers)
    if args.worker == "sequential":
        return sequential_pass(Path(args.slide), args.workers)
    model = build_model(args.model)
    if args.skip_store_writes:
        import zarr

        # diagnostic only: what the consensus map's Zarr chunk writes cost (the map stays empty)
        zarr.Array.__setitem__ = lambda self, key, value: None
    with open_slide(args.slide) as full:
        reader = full if (y0, x0, h, w) == (0, 0, *full.shape) else RegionReader(full, y0, x0, h, w)
        tissue = load_tissue(args.tissue, full.shape)
        if reader is not full:  # crop the tissue mask to the region (cells of `downsample` px)
            d = tissue.downsample
            sub = tissue.mask[int(y0 // d) : int(math.ceil((y0 + h) / d)), int(x0 // d) : int(math.ceil((x0 + w) / d))]
            tissue = TissueMask(mask=sub, downsample=d, thumbnail=np.zeros(sub.shape + (3,), np.uint8))
        setup_rss = (status_kb("VmRSS") or 0) * 1024
        if args.out_zarr and Path(args.out_zarr).exists():
            shutil.rmtree(args.out_zarr)  # the last run's store: deleting it is not the data path (~1 s)
        t0 = time.perf_counter()
        if args.worker == "pipeline":
            stats = P.predict_slide(
                reader, [model], tissue, cfg, args.out_zarr, mean, std, args.device, decode_once=args.decode == "once"
            )
            t1 = time.perf_counter()
            rle = encode_prediction(args.out_zarr, (h, w), cfg)
            t2 = time.perf_counter()
            res = {
                "windows": stats.windows, "read": stats.read_s, "wait": stats.wait_s, "model": stats.model_s,
                "accumulate": stats.accumulate_s, "predict_wall": t1 - t0, "encode": t2 - t1, "total": t2 - t0,
                "accumulator": list(stats.accumulator_shape), "store": list(stats.store_shape),
                "blocks": stats.blocks_read, "busy": stats.model_s / max(t1 - t0, 1e-9),
            }
        else:
            res = notebook(reader, model, tissue, cfg, mean, std, t0)
            rle = res.pop("rle")
    Path(args.out_rle).write_text(rle)
    res.update(setup_rss=setup_rss, peak_rss=(status_kb("VmHWM") or 0) * 1024, region=[y0, x0, h, w])
    return res


def notebook(reader, model, tissue, cfg, mean, std, t0: float) -> dict:
    """Full-resolution accumulators, serial reads, then threshold + rle_encode_less_memory."""
    import torch
    import torch.nn.functional as F

    from pipeline import predict as P

    h, w = reader.shape
    scale = P.model_scale(cfg)
    grid = P.window_grid((h, w), cfg.window, cfg.overlap, tissue, scale=scale)
    preds = np.zeros((h, w), np.float32)
    counts = np.zeros((h, w), np.float32)
    t_read = t_model = t_acc = 0.0
    pos = grid[["y0", "x0"]].to_numpy()
    for i in range(0, len(pos), cfg.batch_size):
        batch = pos[i : i + cfg.batch_size]
        t = time.perf_counter()
        images = np.stack([P.read_window(reader, int(y), int(x), cfg.window, cfg.out_size) for y, x in batch])
        t_read += time.perf_counter() - t
        t = time.perf_counter()
        probs = P.predict_batch([model], images, mean, std, torch.device("cpu"))
        t_model += time.perf_counter() - t
        t = time.perf_counter()
        up = F.interpolate(torch.from_numpy(probs)[:, None], size=(cfg.window, cfg.window), mode="bilinear", align_corners=False)[:, 0].numpy()
        for (y, x), p in zip(batch, up):
            ya, xa = max(y, 0), max(x, 0)
            yb, xb = min(y + cfg.window, h), min(x + cfg.window, w)
            preds[ya:yb, xa:xb] += p[ya - y : yb - y, xa - x : xb - x]
            counts[ya:yb, xa:xb] += 1
        t_acc += time.perf_counter() - t
    t = time.perf_counter()
    np.divide(preds, counts, out=preds, where=counts > 0)
    del counts
    mask = preds > cfg.threshold
    del preds
    rle = rle_encode_less_memory(mask)
    t_enc = time.perf_counter() - t
    return {
        "windows": len(grid), "read": t_read, "wait": t_read, "model": t_model, "accumulate": t_acc,
        "predict_wall": t_read + t_model + t_acc, "encode": t_enc, "total": time.perf_counter() - t0, "rle": rle,
    }


def decode_floor(slide: Path, threads: int) -> dict:
    """Every level-0 tile decoded once by ``threads`` threads, nothing assembled: the physical floor."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.slides import open_slide

    with open_slide(slide) as reader:
        segs = [s for part in reader._levels[0] for s in part.segments or []]
        if not segs:
            raise SystemExit(f"{slide}: no tiles or strips to decode directly")
        t0 = time.perf_counter()
        jobs = []
        for seg in segs:
            indices = list(range(seg.rows * seg.cols * seg.planes))
            for part in np.array_split(np.asarray(indices), max(1, threads) * 8):
                jobs.append((seg, [int(i) for i in part]))

        def decode(job) -> int:
            seg, indices = job
            n = 0
            for data, index in seg.read(indices):
                tile = seg.decode(data, index, **seg.kwargs)[0]
                n += 0 if tile is None else tile.size
            return n

        with ThreadPoolExecutor(max(1, threads)) as pool:
            samples = sum(pool.map(decode, jobs))
        seconds = time.perf_counter() - t0
        h, w = reader.shape
    return {"seconds": seconds, "tiles": sum(s.rows * s.cols * s.planes for s in segs), "samples": samples,
            "slide_mb": h * w * 3 / 1e6}


def sequential_pass(slide: Path, threads: int) -> dict:
    """One pass over the whole slide with the project's reader (``iter_bands``)."""
    from pipeline.slides import open_slide

    with open_slide(slide) as reader:
        t0 = time.perf_counter()
        check = 0
        for _y0, band in reader.iter_bands(workers=threads):
            check = max(check, int(band[::64, ::64].max()))
        h, w = reader.shape
        return {"seconds": time.perf_counter() - t0, "check": check, "slide_mb": h * w * 3 / 1e6}


def data_path(args: argparse.Namespace, slide: Path, tissue: Path, shape: tuple[int, int], workdir: Path) -> None:
    """The data path alone: floor, sequential pass, null-model prediction (decode once / per window).

    With ``--repeat N`` every measurement runs N times, interleaved (floor, pass, predict, floor,
    ...) so that all of them see the same spells of contention, and the fastest of each is kept.
    """
    mb = shape[0] * shape[1] * 3 / 1e6
    whole = [0, 0, *shape]
    null = argparse.Namespace(**{**vars(args), "model": "null"})
    plans: list[tuple[str, str, argparse.Namespace, str, str]] = [  # (row, worker, args, tag, time key)
        (f"raw tile decode floor, {args.workers} thr", "floor", args, "", "seconds"),
        (f"sequential pass (iter_bands), {args.workers} thr", "sequential", args, "", "seconds"),
    ]
    for workers in args.workers_scaling or [args.workers]:
        run = argparse.Namespace(**{**vars(null), "workers": workers, "decode": "once"})
        plans.append((f"predict, null model, decode once, {workers} thr", "pipeline", run, f"once-w{workers}", "predict_wall"))
    if args.with_store_cost:
        run = argparse.Namespace(**{**vars(null), "decode": "once", "skip_store_writes": True})
        plans.append((f"  the same, Zarr store writes skipped, {args.workers} thr", "pipeline", run, "once-nostore", "predict_wall"))
    if args.per_window:
        run = argparse.Namespace(**{**vars(null), "decode": "windows"})
        plans.append((f"predict, null model, per window, {args.workers} thr", "pipeline", run, "windows", "predict_wall"))
    runs: list[list[dict]] = [[] for _ in plans]
    for _ in range(max(1, args.repeat)):
        for results, (_name, kind, run, tag, _key) in zip(runs, plans, strict=True):
            results.append(run_worker(kind, run, slide, tissue, whole, workdir, tag=tag))
    rows: list[tuple[str, float, dict]] = []
    for results, (name, _kind, _run, _tag, key) in zip(runs, plans, strict=True):
        best = min(results, key=lambda r, key=key: r[key])
        rows.append((name, best[key], best))
    seq = rows[1][2]
    base = seq["seconds"]
    print(f"\ndata path on {shape[0]} x {shape[1]} px ({mb:.0f} MB decoded RGB), {os.cpu_count()} CPUs")
    print(f"{'':48s}{'seconds':>9s}{'MB/s':>8s}{'windows/s':>11s}{'x seq':>7s}{'peak GB':>9s}")
    for name, seconds, res in rows:
        wps = f"{res['windows'] / seconds:.1f}" if "windows" in res else ""
        print(f"{name:48s}{seconds:9.1f}{mb / seconds:8.0f}{wps:>11s}{base / seconds:7.2f}{res['peak_rss'] / GB:9.2f}")
    for name, seconds, res in rows:
        if "windows" in res:
            print(f"  {name}: {res['windows']} windows, {res.get('blocks', 0)} blocks decoded, read {res['read']:.1f} s "
                  f"in threads, model waited {res['wait']:.1f} s, model busy {100 * res['busy']:.0f} % of the wall, "
                  f"accumulate {res['accumulate']:.1f} s")


# ---------------------------------------------------------------- driver


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path, tuple[int, int]]:
    """(slide, tissue mask PNG, shape): the given slide or a synthetic one, tissue detected once."""
    from pipeline.config import TissueConfig
    from pipeline.slides import open_slide
    from pipeline.tissue import detect_tissue, save_tissue

    if args.path:
        slide = Path(args.path)
    else:
        slide = workdir / f"synthetic-{args.height}x{args.width}-s0.tiff"
        if not slide.exists():
            from pipeline.synthetic import write_synthetic_slide

            t = time.perf_counter()
            print(f"writing {slide} ...", flush=True)
            tmp = slide.with_name(f".{slide.name}.partial.tiff")
            write_synthetic_slide(tmp, args.height, args.width, 0)
            os.replace(tmp, slide)
            print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    tissue_png = workdir / f"{slide.stem}.tissue.png"
    with open_slide(slide) as reader:
        shape = tuple(int(n) for n in reader.shape)
        if not tissue_png.exists():
            t = time.perf_counter()
            tissue = detect_tissue(reader, TissueConfig())
            save_tissue(tissue, tissue_png, workdir / f"{slide.stem}.tissue.thumb.png")
            print(f"tissue: {100 * tissue.fraction:.0f} % of the slide ({time.perf_counter() - t:.0f} s)", flush=True)
    return slide, tissue_png, shape


def run_worker(
    kind: str, args: argparse.Namespace, slide: Path, tissue: Path, region, workdir: Path, tag: str = ""
) -> dict:
    tag = f"{kind}-{tag or 'x'.join(map(str, region[2:]))}"
    out = workdir / f"{tag}.json"
    cmd = [
        sys.executable, __file__, "--worker", kind, "--slide", str(slide), "--tissue", str(tissue),
        "--region", *map(str, region), "--model", args.model, "--threads", str(args.threads),
        "--workers", str(args.workers), "--batch-size", str(args.batch_size),
        "--device", args.device, "--decode", args.decode, *(["--skip-store-writes"] if args.skip_store_writes else []),
        "--out-json", str(out), "--out-rle", str(workdir / f"{tag}.rle"), "--out-zarr", str(workdir / f"{tag}.zarr"),
    ]
    print(f"running {tag} on {region[2]} x {region[3]} ...", flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    res = json.loads(out.read_text())
    res["rle_path"] = str(workdir / f"{tag}.rle")
    print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    return res


def centre_crop(shape, size: tuple[int, int], align: int = 96) -> list[int]:
    h, w = min(size[0], shape[0]), min(size[1], shape[1])
    y0 = (shape[0] - h) // 2 // align * align
    x0 = (shape[1] - w) // 2 // align * align
    return [y0, x0, h, w]


def table(rows: list[tuple[str, dict]], title: str) -> None:
    print(f"\n{title}")
    names = [n for n, _ in rows]
    print(f"{'':24s}" + "".join(f"{n:>16s}" for n in names) + ("       ratio" if len(rows) == 2 else ""))
    keys = [
        ("windows", "windows", "{:.0f}"),
        ("read", "read (s)", "{:.1f}"),
        ("wait", "  model waited (s)", "{:.1f}"),
        ("model", "model (s)", "{:.1f}"),
        ("accumulate", "accumulate (s)", "{:.1f}"),
        ("predict_wall", "predict wall (s)", "{:.1f}"),
        ("encode", "encode (s)", "{:.1f}"),
        ("total", "total wall (s)", "{:.1f}"),
        ("setup_gb", "RSS after setup (GB)", "{:.2f}"),
        ("peak_gb", "peak RSS (GB)", "{:.2f}"),
        ("extra_gb", "peak - setup (GB)", "{:.2f}"),
    ]
    for _, r in rows:
        r["setup_gb"] = r["setup_rss"] / GB
        r["peak_gb"] = r["peak_rss"] / GB
        r["extra_gb"] = (r["peak_rss"] - r["setup_rss"]) / GB
    for key, label, fmt in keys:
        vals = [r[key] for _, r in rows]
        line = f"{label:24s}" + "".join(f"{fmt.format(v):>16s}" for v in vals)
        if len(rows) == 2 and vals[0] and key not in ("windows",):
            line += f"{vals[1] / vals[0]:>11.2f}x"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=30000)
    ap.add_argument("--width", type=int, default=37000)
    ap.add_argument("--path", help="reuse this slide instead of writing a synthetic one")
    ap.add_argument("--model", choices=("null", "tiny", "unet-resnet18"), default="tiny")
    ap.add_argument("--crop", type=int, nargs="+", help="predict only a centre crop (H [W]) of the slide")
    ap.add_argument("--no-baseline", action="store_true", help="skip the notebook approach")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "bench-predict"))
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="torch threads")
    ap.add_argument("--workers", type=int, default=2, help="reader threads (pipeline)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="torch device for the model (cuda: GPU-busy fraction)")
    ap.add_argument("--decode", choices=("once", "windows"), default="once", help="pipeline data path")
    ap.add_argument("--data-path", action="store_true", help="measure the data path alone (null model, floors)")
    ap.add_argument("--workers-scaling", type=int, nargs="+", help="with --data-path: reader thread counts to run")
    ap.add_argument("--repeat", type=int, default=1, help="with --data-path: runs of each, interleaved; the fastest is kept")
    ap.add_argument("--per-window", action="store_true", help="with --data-path: also the old per-window path")
    ap.add_argument("--with-store-cost", action="store_true",
                    help="with --data-path: also a run whose Zarr store writes are skipped (what those writes cost)")
    ap.add_argument("--skip-store-writes", action="store_true", help=argparse.SUPPRESS)
    # worker mode (internal)
    ap.add_argument("--worker", choices=("pipeline", "notebook", "floor", "sequential"), help=argparse.SUPPRESS)
    ap.add_argument("--slide", help=argparse.SUPPRESS)
    ap.add_argument("--tissue", help=argparse.SUPPRESS)
    ap.add_argument("--region", type=int, nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--out-json", help=argparse.SUPPRESS)
    ap.add_argument("--out-rle", help=argparse.SUPPRESS)
    ap.add_argument("--out-zarr", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        res = worker(args)
        res.setdefault("peak_rss", (status_kb("VmHWM") or 0) * 1024)
        Path(args.out_json).write_text(json.dumps(res))
        return

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    slide, tissue, shape = prepare(args, workdir)
    region = [0, 0, *shape]
    if args.crop:
        region = centre_crop(shape, (args.crop[0], args.crop[-1]))
    if args.data_path:
        data_path(args, slide, tissue, shape, workdir)
        return
    print(f"slide {slide} {shape[0]} x {shape[1]}; region {region}; model {args.model}; "
          f"{args.threads} torch threads, {args.workers} reader threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    ours = run_worker("pipeline", args, slide, tissue, region, workdir)
    rows = [("pipeline", ours)]
    title = f"{args.model} model, {region[2]} x {region[3]} px"
    if not args.no_baseline:
        need = NOTEBOOK_BYTES_PER_PX * region[2] * region[3]
        avail = mem_available()
        base_region = region
        if need * 1.2 > avail:
            side = int(math.sqrt(avail / 1.2 / NOTEBOOK_BYTES_PER_PX))
            base_region = centre_crop(shape, (min(side, region[2]), min(side, region[3])))
            print(f"notebook approach needs ~{need / GB:.1f} GB but {avail / GB:.1f} GB are available: "
                  f"running it (and the pipeline again) on a {base_region[2]} x {base_region[3]} crop", flush=True)
        base = run_worker("notebook", args, slide, tissue, base_region, workdir)
        if base_region != region:
            print(f"\npipeline on the full region: peak RSS {ours['peak_rss'] / GB:.2f} GB, "
                  f"total {ours['total']:.1f} s", flush=True)
            ours = run_worker("pipeline", args, slide, tissue, base_region, workdir)
            title = f"{args.model} model, {base_region[2]} x {base_region[3]} px crop"
        rows = [("pipeline", ours), ("notebook", base)]
        from pipeline.metrics import dice_rle

        agree = dice_rle(Path(ours["rle_path"]).read_text(), Path(base["rle_path"]).read_text(), tuple(base_region[2:]))
    table(rows, title)
    print(f"\naccumulators: 2 x {ours['accumulator'][0]} x {ours['accumulator'][1]} float32 "
          f"= {2 * 4 * ours['accumulator'][0] * ours['accumulator'][1] / 1e6:.0f} MB; low-res store {ours['store']}")
    overhead = ours["read"] + ours["accumulate"] + ours["encode"]
    print(f"pipeline overhead (read in threads + accumulate + encode) = {overhead:.1f} s "
          f"= {overhead / max(ours['model'], 1e-9):.2f} x model time; model waited {ours['wait']:.1f} s for reads")
    if not args.no_baseline:
        from pipeline.rle import area

        frac = area(Path(ours["rle_path"]).read_text()) / (base_region[2] * base_region[3])
        print(f"agreement pipeline vs notebook masks: Dice {agree:.4f} on a mask covering {100 * frac:.1f} % "
              "(differences: Gaussian vs count blending, low-res vs full-res upsampling)")


if __name__ == "__main__":
    main()
