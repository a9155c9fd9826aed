"""Domain shift: the real test mosaics as another lab's scanner or camera would show them.

After one or more finished ``bench/real.py`` runs (``--config OUT/config.yaml`` each), applies a
fixed set of realistic colour and optics shifts to the run's test mosaics, predicts every
shifted slide with that run's fold ensemble exactly as the workflow does (tissue detection on
the shifted slide, sliding-window consensus, the run's threshold and post-processing), and
prints the Kaggle Dice per shift beside the unshifted Dice, one column per run, with the
ratio shifted / unshifted (the issue's goal: >= 0.9 on every shift).

The shifts (:data:`SHIFTS`), each a function of the uint8 RGB slide:

* ``tint``: camera white balance, a grey-blue background (R x0.80, G x0.84, B x0.98);
* ``underexposed``: half the light (x0.5 in linear light, sRGB gamma 2.2);
* ``other_camera``: the darker, bluer look of a real PAS biopsy from another lab's microscope
  camera (per-channel means ~(121, 114, 145) against ~(217, 199, 219) for these tiles);
* ``pas_darker`` / ``pas_bluer``: a denser stain, and a bluer one, in Ruifrok's HED space
  (H x1.4 E x1.4; H x1.5 E x0.6);
* ``jpeg70``: JPEG re-compression at quality 70;
* ``blur``: an out-of-focus scan (Gaussian, sigma 1.5 px at 0.5 um/px).

    .venv/bin/python bench/shift.py --config /tmp/real-bench-cpu/config.yaml
    .venv/bin/python bench/shift.py --config /tmp/rb-none/config.yaml --config /tmp/rb-reinhard/config.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline.config import Config, load_config  # noqa: E402

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def _gains(image: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return np.clip(image.astype(np.float32) * np.asarray(gains, np.float32) + 0.5, 0, 255).astype(np.uint8)


def _exposure(image: np.ndarray, factor: float, gamma: float = 2.2) -> np.ndarray:
    linear = (image.astype(np.float32) / 255.0) ** gamma
    return np.clip(255.0 * (linear * factor) ** (1.0 / gamma) + 0.5, 0, 255).astype(np.uint8)


def _hed(image: np.ndarray, h: float, e: float) -> np.ndarray:
    """Scale the haematoxylin and eosin concentrations (Beer-Lambert, Ruifrok's vectors)."""
    od = -np.log10(np.maximum(image.astype(np.float32), 1.0) / 255.0)
    conc = od.reshape(-1, 3) @ HED_FROM_RGB.astype(np.float32)
    conc *= np.array([h, e, 1.0], np.float32)
    rgb = 255.0 * 10.0 ** -(conc @ RGB_FROM_HED.astype(np.float32))
    return np.clip(rgb.reshape(image.shape) + 0.5, 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda im: im,
    "tint": lambda im: _gains(im, (0.80, 0.84, 0.98)),
    "underexposed": lambda im: _exposure(im, 0.5),
    "other_camera": lambda im: _gains(im, (121 / 217, 114 / 199, 145 / 219)),
    "pas_darker": lambda im: _hed(im, 1.4, 1.4),
    "pas_bluer": lambda im: _hed(im, 1.5, 0.6),
    "jpeg70": lambda im: _jpeg(im, 70),
    "blur": lambda im: _blur(im, 1.5),
}


def _threshold(config: Config, results: Path) -> float:
    from pipeline import thresholds

    if config.predict.threshold != thresholds.AUTO:
        return float(config.predict.threshold)
    return float(thresholds.read_choice(results / "evaluation" / "threshold.json")[thresholds.STORE_ATTR])


def score_run(config_path: Path, shifts: list[str], workdir: Path, no_tta: bool) -> dict[str, dict[str, float]]:
    """shift -> slide -> Dice for one finished run (its fold ensemble on its shifted test mosaics)."""
    import tifffile
    from real import write_slide

    from pipeline.dataset import TEST_TRUTH_CSV, read_encodings
    from pipeline.encode import encode_prediction
    from pipeline.metrics import dice_rle
    from pipeline.predict import run_predict
    from pipeline.tissue import run_tissue

    config = load_config(config_path)
    data, results = Path(config.data_dir), Path(config.results_dir)
    models = sorted((results / "models").glob("fold*/model.pt"))
    if not models:
        raise SystemExit(f"{results / 'models'}: no fold*/model.pt (is the run finished?)")
    predict_cfg = dataclasses.replace(config.predict, threshold=_threshold(config, results))
    if no_tta:
        predict_cfg = dataclasses.replace(predict_cfg, tta=[])
    config = dataclasses.replace(config, predict=predict_cfg)
    truth = read_encodings(data / TEST_TRUTH_CSV)
    scores: dict[str, dict[str, float]] = {}
    for shift in shifts:
        scores[shift] = {}
        for slide_id, rle in truth.items():
            image = tifffile.imread(data / "test" / f"{slide_id}.tiff")
            out = workdir / shift
            slide = out / "test" / f"{slide_id}.tiff"
            write_slide(slide, SHIFTS[shift](image))
            mask, thumb = out / "tissue" / f"{slide_id}.png", out / "tissue" / f"{slide_id}.thumb.png"
            run_tissue(slide, mask, thumb, config)
            store = out / "predictions" / f"{slide_id}.zarr"
            run_predict(slide, models, mask, store, config)
            shape = image.shape[:2]
            scores[shift][slide_id] = dice_rle(encode_prediction(store, shape, config.predict), rle, shape)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, action="append", required=True,
                        help="OUT/config.yaml of a finished bench/real.py run (repeat to compare runs)")
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=list(SHIFTS))
    parser.add_argument("--no-tta", action="store_true", help="predict without the run's TTA (faster)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/shift-bench"))
    args = parser.parse_args(argv)
    shifts = ["none", *[s for s in args.shifts if s != "none"]]

    runs = {}
    for i, cfg in enumerate(args.config):
        t = time.perf_counter()
        runs[str(cfg)] = score_run(cfg, shifts, args.workdir / f"run{i}", args.no_tta)
        print(f"{cfg}: {len(shifts)} conditions scored in {time.perf_counter() - t:.0f} s", flush=True)
    for i, cfg in enumerate(args.config):
        print(f"  [{i}] {cfg}")
    header = "".join(f"{f'[{i}] Dice':>11} {'ratio':>6}" for i in range(len(runs)))
    print(f"\n  {'shift':<14}{header}")
    for shift in shifts:
        cells = []
        for scores in runs.values():
            mean = float(np.mean(list(scores[shift].values())))
            base = float(np.mean(list(scores["none"].values())))
            cells.append(f"{mean:>11.4f} {mean / base if base > 0 else float('nan'):>6.2f}")
        print(f"  {shift:<14}{''.join(cells)}")
    print("\n  per slide:")
    for cfg, scores in runs.items():
        for shift in shifts:
            per = "  ".join(f"{s} {d:.4f}" for s, d in scores[shift].items())
            print(f"  {Path(cfg).parent.name:<14} {shift:<14} {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
