"""Benchmark: training throughput with the real data path vs the model step alone.

Measured in the same run, on a synthetic Zarr tile store written like
``pipeline/tiles.py`` writes them (zstd, one tile per chunk):

* ``loading only``: the real :class:`pipeline.tile_dataset.TileDataset` + DataLoader
  (Zarr reads, albumentations augmentation, collation), no model;
* ``model step alone`` (**baseline**): the same batches pre-loaded in memory,
  :func:`pipeline.train.train_step` (normalise on the device, forward, loss,
  backward, AdamW step);
* ``loading + step``: both, as :func:`pipeline.train.fit` runs them;
* ``inference``: forward only in eval mode (validation, filter scoring, predict).

If ``loading + step`` is well below ``model step alone``, loading is the bottleneck
(raise ``train.num_workers``); if the two are close, the model is.

``--demo`` measures a few candidate models for the CPU demo and estimates the time
the demo's filter + training stages would take at that speed (tile counts from
``--demo-index`` if given, else the defaults of ``config/demo.yaml``'s data).
``--learn INDEX_CSV`` additionally trains each candidate for ``--learn-epochs`` on
real tile stores (e.g. ``results/demo/tiles/index.csv``) and reports its best
validation Dice, to check that a fast candidate still learns.

    python bench/train.py                                   # Unet efficientnet-b0, 512 px, batch 8
    python bench/train.py --encoder resnet18 --tile 256 --workers 2
    python bench/train.py --demo --learn results/demo/tiles/index.csv
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr
from zarr.codecs import ZstdCodec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.augment import build_augment  # noqa: E402
from pipeline.config import Config, load_config  # noqa: E402
from pipeline.losses import build_loss  # noqa: E402
from pipeline.models import build_model, select_device  # noqa: E402
from pipeline.tile_dataset import EpochSampler, TileDataset, make_loader  # noqa: E402
from pipeline.train import _Runner, train_fold, train_step  # noqa: E402

DEMO_CANDIDATES = [  # (arch, encoder, tile px)
    ("Unet", "resnet18", 256),
    ("Unet", "resnet18", 128),
    ("FPN", "resnet18", 256),
    ("Unet", "tu-tf_mobilenetv3_small_100", 256),
    ("Unet", "efficientnet-b0", 256),
]


def write_store(path: Path, n: int, size: int, seed: int = 0) -> pd.DataFrame:
    """``n`` tiles: smooth pink tissue with texture, dark discs (positives) on half of them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        coarse = rng.normal(0, 20, (size // 16, size // 16, 3)).repeat(16, 0).repeat(16, 1)
        img = np.array([220.0, 150.0, 190.0]) + coarse + rng.normal(0, 8, (size, size, 3))
        if i % 2 == 0:
            r = rng.uniform(0.1, 0.2) * size
            cy, cx = rng.uniform(r, size - r, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img[disc] -= np.array([100.0, 100.0, 60.0])
            masks[i][disc] = 1
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    group = zarr.open_group(str(path), mode="w")
    group.create_array("images", data=images, chunks=(1, size, size, 3), compressors=ZstdCodec(level=3))
    group.create_array("masks", data=masks, chunks=(1, size, size), compressors=ZstdCodec(level=3))
    return pd.DataFrame({"slide": "bench", "tile": np.arange(n), "y0": 0, "x0": 0, "tissue": 1.0,
                         "positive": masks.mean(axis=(1, 2))})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: Config, store: Path, index: pd.DataFrame, warmup: int, device: torch.device) -> dict:
    """tiles/s of loading only, model step alone, loading + step, and inference."""
    tcfg = config.train
    bs = tcfg.batch_size
    ds = TileDataset(index, {"bench": store}, augment=build_augment(tcfg.augment))
    sampler = EpochSampler(len(ds), tcfg.seed)
    loader = make_loader(ds, bs, tcfg.num_workers, device, sampler, tcfg.seed, drop_last=True)
    n_timed = (len(ds) // bs - warmup) * bs
    out: dict[str, float] = {}

    def timed_epoch(body) -> float:
        """tiles/s over the batches after ``warmup`` (worker start-up and first calls excluded)."""
        t0 = None
        for i, (images, masks) in enumerate(loader):
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            body(images, masks)
        _sync(device)
        return n_timed / (time.perf_counter() - t0)

    # loading only (workers started, epoch 1)
    sampler.set_epoch(1)
    out["loading only"] = timed_epoch(lambda images, masks: None)

    torch.manual_seed(0)
    runner = _Runner(build_model(config.model), config, device)
    runner.model.train()
    optimizer = torch.optim.AdamW(runner.model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=runner.amp_dtype == torch.float16)
    loss_fn = build_loss(tcfg).to(device)

    # model step alone: the same batches, pre-loaded
    sampler.set_epoch(2)
    batches = list(loader)
    for images, masks in batches[:warmup]:
        train_step(runner, images, masks, loss_fn, optimizer, scaler)
    _sync(device)
    t0 = time.perf_counter()
    for images, masks in batches[warmup:]:
        train_step(runner, images, masks, loss_fn, optimizer, scaler)
    _sync(device)
    out["model step alone"] = n_timed / (time.perf_counter() - t0)

    # loading + step, as fit() runs it
    sampler.set_epoch(3)
    out["loading + step"] = timed_epoch(lambda im, ma: train_step(runner, im, ma, loss_fn, optimizer, scaler))

    # inference (validation / filter scoring / predict): forward only, pre-loaded
    runner.model.eval()
    with torch.inference_mode():
        for images, _ in batches[:warmup]:
            runner.forward(runner.batch(images, _)[0])
        _sync(device)
        t0 = time.perf_counter()
        for images, masks in batches[warmup:]:
            runner.forward(runner.batch(images, masks)[0])
        _sync(device)
    out["inference"] = n_timed / (time.perf_counter() - t0)
    del loader
    return out


def make_config(arch: str, encoder: str, batch: int, workers: int, device: str, **train) -> Config:
    return load_config(overrides={
        "model": {"arch": arch, "encoder": encoder},
        "train": {"batch_size": batch, "num_workers": workers, "device": device, **train},
    })


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    """Rows = measurements, columns = configurations; ratio = vs model step alone."""
    names = list(rows)
    width = max(22, *(len(n) + 2 for n in names))
    print(f"\n{title}")
    print(f"{'tiles/s':<18s}" + "".join(f"{n:>{width}s}" for n in names))
    for kind in ("loading only", "model step alone", "loading + step", "inference"):
        cells = []
        for n in names:
            v, base = rows[n][kind], rows[n]["model step alone"]
            cells.append(f"{v:8.1f} ({v / base:4.2f}x)")
        print(f"{kind:<18s}" + "".join(f"{c:>{width}s}" for c in cells))
    print("(ratios vs 'model step alone', the baseline measured in the same run)")


def demo_estimate(rows: dict[str, dict[str, float]], tiles: int, folds: int, epochs: int,
                  filter_epochs: int) -> None:
    """Seconds the demo's filter + training stages take at the measured speeds."""
    # stage 1 trains and scores every tile; each fold trains on (folds-1)/folds of the
    # tiles kept (assume all kept: upper bound) and validates on the rest every epoch
    train_tiles, val_tiles = tiles * (folds - 1) / folds, tiles / folds
    print(f"\ndemo estimate: {tiles} tiles, {folds} folds x {epochs} epochs, filter {filter_epochs} epoch(s)"
          " (all folds run one after the other on the same 2 cores; upper bound: no tile filtered)")
    print(f"{'':24s}{'filter s':>10s}{'train s':>10s}{'total min':>10s}")
    for name, r in rows.items():
        step, infer = r["loading + step"], r["inference"]
        filt = filter_epochs * tiles / step + tiles / infer
        train = folds * epochs * (train_tiles / step + val_tiles / infer)
        print(f"{name:<24s}{filt:10.0f}{train:10.0f}{(filt + train) / 60:10.1f}")


def downsampled_stores(stores: dict[str, Path], size: int, out_dir: Path) -> dict[str, Path]:
    """Copies of tile stores area-reduced to ``size`` px (masks: area fraction >= 0.5), as tiles.py would."""
    from pipeline.resize import resize_area

    out = {}
    for slide, path in stores.items():
        group = zarr.open_group(str(path), mode="r")
        images = np.stack([resize_area(im, size) for im in group["images"][:]])
        masks = np.stack([resize_area(m.astype(np.float32), size) >= 0.5 for m in group["masks"][:]])
        target = out_dir / f"{slide}.zarr"
        new = zarr.open_group(str(target), mode="w")
        new.create_array("images", data=images, chunks=(1, size, size, 3), compressors=ZstdCodec(level=3))
        new.create_array("masks", data=masks.astype(np.uint8), chunks=(1, size, size),
                         compressors=ZstdCodec(level=3))
        out[slide] = target
    return out


def learn(candidates, index_csv: Path, epochs: int, device: str, workers: int, batch: int) -> None:
    """Train fold 0 of each candidate on real tile stores; best validation Dice and wall time.

    A candidate whose tile size is smaller than the stores' gets area-reduced copies
    (same field of view, fewer pixels: what a smaller ``tiles.out_size`` would give).
    """
    index = pd.read_csv(index_csv)
    tiles_dir = index_csv.parent
    stores = {s: tiles_dir / f"{s}.zarr" for s in index["slide"].astype(str).unique()}
    stored = {zarr.open_group(str(p), mode="r")["images"].shape[1] for p in stores.values()}
    print(f"\nlearning check: fold 0 of 2 on {index_csv} ({len(index)} tiles of {sorted(stored)} px), "
          f"{epochs} epochs, validation Dice at the tile resolution")
    print(f"{'':30s}{'best Dice':>10s}{'at epoch':>10s}{'wall s':>10s}")
    for arch, encoder, size in candidates:
        if len(stored) != 1 or size > min(stored):
            print(f"{arch} {encoder} {size}: skipped (stores hold {sorted(stored)} px tiles)")
            continue
        config = make_config(arch, encoder, batch, workers, device, epochs=epochs, folds=2, patience=0)
        with tempfile.TemporaryDirectory() as tmp:
            use = stores if size == min(stored) else downsampled_stores(stores, size, Path(tmp))
            t0 = time.perf_counter()
            m = train_fold(index, use, 0, Path(tmp) / "out", config)
            wall = time.perf_counter() - t0
        best = m.loc[m["val_dice"].idxmax()]
        print(f"{f'{arch} {encoder} {size}':<30s}{best['val_dice']:10.3f}{int(best['epoch']):10d}{wall:10.0f}"
              f"   per epoch: {' '.join(f'{d:.2f}' for d in m['val_dice'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="Unet")
    ap.add_argument("--encoder", default="efficientnet-b0")
    ap.add_argument("--tile", type=int, default=512, help="tile size in px (model input)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0, help="data-loader workers (train.num_workers)")
    ap.add_argument("--batches", type=int, default=5, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--demo", action="store_true", help="measure the demo candidates instead")
    ap.add_argument("--demo-index", type=Path, help="tile index CSV of the demo (tile count for the estimate)")
    ap.add_argument("--demo-tiles", type=int, default=215, help="demo tiles when no --demo-index")
    ap.add_argument("--demo-epochs", type=int, default=8)
    ap.add_argument("--demo-folds", type=int, default=2)
    ap.add_argument("--demo-filter-epochs", type=int, default=1)
    ap.add_argument("--learn", type=Path, help="tile index CSV next to its Zarr stores: short real training")
    ap.add_argument("--learn-epochs", type=int, default=4)
    ap.add_argument("--learn-which", type=int, nargs="+", help="indices of the candidates to train (default all)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other jobs skew CPU figures)")

    candidates = DEMO_CANDIDATES if args.demo else [(args.arch, args.encoder, args.tile)]
    n = (args.batches + args.warmup) * args.batch_size
    rows: dict[str, dict[str, float]] = {}
    indexes: dict[int, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, encoder, size in candidates:
            store = Path(tmp) / f"bench{size}.zarr"
            if size not in indexes:
                indexes[size] = write_store(store, n, size)
            index = indexes[size]
            config = make_config(arch, encoder, args.batch_size, args.workers, args.device)
            name = f"{arch} {encoder} {size}"
            print(f"measuring {name} ({n} tiles, batch {args.batch_size}, {args.workers} workers) ...", flush=True)
            rows[name] = measure(config, store, index, args.warmup, device)
    print_table(f"training throughput on {device}", rows)
    if args.demo:
        tiles = len(pd.read_csv(args.demo_index)) if args.demo_index else args.demo_tiles
        demo_estimate(rows, tiles, args.demo_folds, args.demo_epochs, args.demo_filter_epochs)
    if args.learn:
        which = [candidates[i] for i in args.learn_which] if args.learn_which else candidates
        learn(which, args.learn, args.learn_epochs, args.device, args.workers, args.batch_size)


if __name__ == "__main__":
    main()
