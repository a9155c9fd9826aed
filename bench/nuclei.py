"""Touching nuclei: does the U-Net border-weighted loss separate them better than plain BCE?

Writes the synthetic nuclei set of ``python -m pipeline synth --layout dsb2018`` (touching
round nuclei in clusters, a third dark-field), runs the whole workflow on it
(``data_layout: dsb2018``) once per loss with everything else equal (``config/nuclei.yaml``: same
seed, tiles, epochs, ``model.input_norm: invert_dark``), and scores each run's per-image masks
(``predictions/masks/{id}.png``) against the *instances* of the test images (their
per-object mask files), at full resolution:

* object precision / recall / F1: predicted 8-connected components matched one-to-one to
  true nuclei at IoU >= 0.5 (:func:`pipeline.objects.match_objects`);
* merged pairs: for every predicted component, the true nuclei it holds (>= 50 % of the
  nucleus's pixels inside it) minus one, summed: 0 when every touching pair was split;
* pixel Dice (the workflow's ``evaluation/dice.csv``) and the out-of-fold Dice.

    .venv/bin/python bench/nuclei.py                       # ~40 min on 2 cores
    .venv/bin/python bench/nuclei.py --epochs 10 --n-train 12 --out /tmp/nuclei-quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline.objects import label_objects, match_objects  # noqa: E402
from pipeline.patches import find_patches, instance_labels, read_mask  # noqa: E402
from pipeline.synthetic import make_nuclei_dataset  # noqa: E402
from real import run_workflow, stage_times  # noqa: E402

#: The losses compared; everything else in :data:`BASE_CONFIG` is shared.
LOSSES: dict[str, dict[str, float]] = {"bce": {"bce": 1.0}, "border_bce": {"border_bce": 1.0}}

#: The shared settings: the shipped nuclei config (its loss replaced per run).
BASE_CONFIG = ROOT / "config" / "nuclei.yaml"


def image_scores(pred: np.ndarray, truth_labels: np.ndarray) -> dict[str, int]:
    """Object counts, one-to-one matches at IoU >= 0.5 and merged pairs of one image."""
    pred_labels, n_pred = label_objects(pred)
    n_truth = int(truth_labels.max())
    matched = match_objects(pred_labels, n_pred, truth_labels, n_truth)
    merged = 0
    if n_pred and n_truth:
        inside = np.bincount(
            truth_labels[pred_labels > 0] * (n_pred + 1) + pred_labels[pred_labels > 0],
            minlength=(n_truth + 1) * (n_pred + 1),
        ).reshape(n_truth + 1, n_pred + 1)[1:, 1:]
        area = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)[1:, None]
        held = inside * 2 >= area  # nucleus t lies mostly inside component p
        merged = int(np.maximum(held.sum(axis=0) - 1, 0).sum())
    return {"predicted": n_pred, "truth": n_truth, "matched": matched, "merged": merged}


def score_run(data: Path, results: Path) -> dict[str, float]:
    """Totals over the test images of one run (see the module doc)."""
    totals = {"predicted": 0, "truth": 0, "matched": 0, "merged": 0}
    for patch in find_patches(data, "dsb2018"):
        if patch.split != "test":
            continue
        pred_png = results / "predictions" / "masks" / f"{patch.id}.png"
        pred = read_mask(pred_png, _png_shape(pred_png))
        truth = instance_labels(patch.masks, pred.shape)
        for key, value in image_scores(pred, truth).items():
            totals[key] += value
    out: dict[str, float] = dict(totals)
    out["precision"] = totals["matched"] / totals["predicted"] if totals["predicted"] else 0.0
    out["recall"] = totals["matched"] / totals["truth"] if totals["truth"] else 0.0
    both = totals["predicted"] + totals["truth"]
    out["f1"] = 2.0 * totals["matched"] / both if both else 1.0
    out["dice"] = _mean_row(results / "evaluation" / "dice.csv", "dice")
    out["oof_dice"] = _mean_row(results / "evaluation" / "oof.csv", "dice")
    return out


def _png_shape(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def _mean_row(path: Path, column: str) -> float:
    import pandas as pd

    table = pd.read_csv(path)
    key = "id" if "id" in table.columns else "slide"
    return float(table.loc[table[key] == "mean", column].iloc[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/nuclei-bench"))
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--epochs", type=int, help="train.epochs (default: config/nuclei.yaml's)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (training uses train.seed, 42)")
    parser.add_argument("--cores", default="2")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    args = parser.parse_args(argv)

    out = args.out.resolve()
    data = out / "data"
    if not (data / "test").is_dir():
        make_nuclei_dataset(data, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    print(f"data: {data} ({args.n_train} train + {args.n_test} test images of 256 px)")
    rows = {}
    for name in args.losses:
        workdir = out / name
        config = yaml.safe_load(BASE_CONFIG.read_text())
        config["data_dir"] = str(data)
        config["results_dir"] = str(workdir / "results")
        config["train"]["loss"] = LOSSES[name]
        if args.epochs is not None:
            config["train"]["epochs"] = args.epochs
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        t0 = time.perf_counter()
        if run_workflow(workdir, config_path, args.cores) != 0:
            print(f"{name}: workflow failed; see {workdir / 'snakemake.log'}", file=sys.stderr)
            return 1
        rows[name] = score_run(data, workdir / "results")
        times = stage_times(workdir / "results")
        print(f"{name}: workflow {time.perf_counter() - t0:.0f} s (train {times.get('train', 0):.0f} s)")

    print("\nloss         objects  truth  matched  merged  precision  recall     F1   Dice  OOF Dice")
    for name, r in rows.items():
        print(f"{name:<12} {r['predicted']:>7.0f} {r['truth']:>6.0f} {r['matched']:>8.0f} {r['merged']:>7.0f}"
              f" {r['precision']:>10.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} {r['dice']:>6.3f} {r['oof_dice']:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
