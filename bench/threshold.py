"""Does ``predict.threshold: auto`` beat 0.5? Both on the same probability maps, out of fold, on test and held-out slides.

After a finished workflow run (``results_dir`` of ``--config``, whatever its own
``predict.threshold``), prints the Kaggle Dice per slide at the threshold ``auto`` picks from
that run's out-of-fold curve (``evaluation/oof_thresholds.csv``: best mean per-slide Dice, ties
to the one nearest 0.5) beside the Dice at a fixed threshold (``--fixed``, 0.5), each with the
configured post-processing:

* **out of fold**: the training slides' ``oof/{id}.zarr`` maps (where ``auto`` was chosen);
* **test**: the run's ``predictions/{id}.zarr`` against ``test_truth.csv``;
* **held-out** (``--held-out N``): N new synthetic slides (``--seed``, ``--size``) that nothing
  was tuned on, predicted here with the run's fold ensemble and the same settings.

    .venv/bin/python bench/threshold.py --config config/demo.yaml --held-out 2
    .venv/bin/python bench/threshold.py --config /tmp/real-bench-cpu/config.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import Config, load_config  # noqa: E402


def _dice_pair(store: Path, truth: str, config: Config, thresholds: tuple[float, float]) -> tuple[float, float]:
    from pipeline.encode import encode_prediction, open_prediction
    from pipeline.metrics import dice_rle

    shape = tuple(int(n) for n in open_prediction(store).attrs["slide_shape"])
    out = []
    for t in thresholds:
        cfg = dataclasses.replace(config.predict, threshold=t)
        out.append(dice_rle(encode_prediction(store, shape, cfg), truth, shape))
    return out[0], out[1]


def _held_out(config: Config, results: Path, n: int, seed: int, size: int, workdir: Path) -> dict[str, tuple[Path, str]]:
    """Write ``n`` new synthetic slides, predict them with the run's fold ensemble; id -> (store, truth)."""
    from pipeline.dataset import read_encodings
    from pipeline.predict import run_predict
    from pipeline.synthetic import make_dataset
    from pipeline.tissue import run_tissue

    data = make_dataset(workdir / "data", n_train=0, n_test=n, height=size, width=size, seed=seed)
    truth = read_encodings(data / "test_truth.csv")
    models = sorted((results / "models").glob("fold*/model.pt"))
    auto_free = dataclasses.replace(config, predict=dataclasses.replace(config.predict, threshold=0.5))
    out = {}
    for slide_id, rle in truth.items():
        slide = data / "test" / f"{slide_id}.tiff"
        mask, thumb = workdir / "tissue" / f"{slide_id}.png", workdir / "tissue" / f"{slide_id}.thumb.png"
        run_tissue(slide, mask, thumb, config)
        store = workdir / "predictions" / f"{slide_id}.zarr"
        run_predict(slide, models, mask, store, auto_free)
        out[slide_id] = (store, rle)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the config of the finished run")
    parser.add_argument("--fixed", type=float, default=0.5, help="the fixed threshold to compare with")
    parser.add_argument("--held-out", type=int, default=0, help="new synthetic slides to predict and score")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the held-out slides")
    parser.add_argument("--size", type=int, default=6144, help="side of the held-out slides, px")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/threshold-bench"), help="for the held-out slides")
    args = parser.parse_args(argv)

    import pandas as pd

    from pipeline.dataset import TEST_TRUTH_CSV, read_encodings
    from pipeline.encode import open_prediction
    from pipeline.oof import slide_truth_rle

    config = load_config(args.config)
    data, results = Path(config.data_dir), Path(config.results_dir)
    if not args.config.is_absolute() and not results.is_absolute():
        data, results = ROOT / data, ROOT / results
    curve = pd.read_csv(results / "evaluation" / "oof_thresholds.csv")
    best = max(zip(curve["threshold"], curve["mean_dice"], strict=True), key=lambda td: (round(td[1], 12), -abs(td[0] - 0.5)))
    auto = float(best[0])
    pair = (auto, args.fixed)
    print(f"auto: {auto:.2f} (mean out-of-fold Dice {best[1]:.4f} before post-processing) vs fixed {args.fixed:.2f}; "
          f"post-processing: fill_holes {config.predict.fill_holes}, min_object_px {config.predict.min_object_px}")
    sets: dict[str, dict[str, tuple[Path, str]]] = {"out of fold": {}, "test": {}, "held-out": {}}
    for store in sorted((results / "oof").glob("*.zarr")):
        shape = tuple(int(n) for n in open_prediction(store).attrs["slide_shape"])
        sets["out of fold"][store.stem] = (store, slide_truth_rle(data, store.stem, shape))
    for slide_id, rle in read_encodings(data / TEST_TRUTH_CSV).items():
        store = results / "predictions" / f"{slide_id}.zarr"
        if store.exists():
            sets["test"][slide_id] = (store, rle)
    if args.held_out:
        sets["held-out"] = _held_out(config, results, args.held_out, args.seed, args.size, args.workdir)
    print(f"\n  {'set':<12} {'slide':<14} {f'Dice @{auto:.2f}':>11} {f'Dice @{args.fixed:.2f}':>11} {'gain':>8}")
    for name, slides in sets.items():
        scores = []
        for slide_id, (store, truth) in slides.items():
            d_auto, d_fixed = _dice_pair(store, truth, config, pair)
            scores.append((d_auto, d_fixed))
            print(f"  {name:<12} {slide_id:<14} {d_auto:>11.4f} {d_fixed:>11.4f} {d_auto - d_fixed:>+8.4f}")
        if scores:
            ma, mf = (sum(s[i] for s in scores) / len(scores) for i in (0, 1))
            print(f"  {name:<12} {'mean':<14} {ma:>11.4f} {mf:>11.4f} {ma - mf:>+8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
