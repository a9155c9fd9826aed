"""The standing fault table for bad inputs: one row per bad input a user or a nightly run can hand in.

Errors: the stage run as on the command line (``pipeline.cli.main``, what ``python -m pipeline``
calls) ends with one line ``<ErrorType>: <file or key>: <problem>`` and leaves none of its outputs
behind. Warnings: a bad input that must not stop the other slides is reported naming its file,
never dropped silently. Rows marked "issue 11" were faults; the others guard what already held.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml
import zarr

from pipeline.annotations import MAX_POLYGON_BYTES, polygons_to_rle, write_hubmap_json
from pipeline.cli import main
from pipeline.config import Config, PredictConfig, TilesConfig, TissueConfig
from pipeline.dataset import input_problems, planned_slides
from pipeline.encode import encode_prediction
from pipeline.errors import DataError
from pipeline.synthetic import write_synthetic_slide
from pipeline.tissue import run_tissue
from tests.conftest import REPO, SHARED_DATA
from tests.workflow_helpers import SNAKEFILE, TINY_SETTINGS

SIZE = 512  # slides of 512 x 512 px: real tiled JPEG TIFFs, written in ~0.1 s
TISSUE = {"tissue": {"downsample": 16}}
FIXTURES = SHARED_DATA / "wsi" / "openslide-fixtures"


# ---------------------------------------------------------------- helpers


def slide(path: Path, seed: int = 1) -> list:
    """A real synthetic slide at ``path``; its glomerulus polygons."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_synthetic_slide(path, SIZE, SIZE, seed=seed)


def train_dir(root: Path, ids: tuple[str, ...] = ("a",), csv_ids: tuple[str, ...] | None = None) -> Path:
    """``root`` in the Kaggle layout: ``train/{id}.tiff`` + ``train.csv`` rows for ``csv_ids`` (default: all)."""
    rows = []
    for k, slide_id in enumerate(ids):
        polygons = slide(root / "train" / f"{slide_id}.tiff", seed=k + 1)
        if csv_ids is None or slide_id in csv_ids:
            rows.append({"id": slide_id, "encoding": polygons_to_rle(polygons, (SIZE, SIZE))})
    pd.DataFrame(rows, columns=["id", "encoding"]).to_csv(root / "train.csv", index=False)
    return root


def tissue_png(slide_path: Path, out: Path) -> Path:
    run_tissue(slide_path, out / "t.png", out / "t.thumb.png", Config(tissue=TissueConfig(downsample=16)))
    return out / "t.png"


def write_bytes_sparse(path: Path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk (the size guard must refuse it before reading)."""
    path.write_text("[")
    os.truncate(path, size)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """Run ``python -m pipeline ...`` in this process (main); (exit status, stderr). Logging restored after."""

    def run(*argv: object) -> tuple[int, str]:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            code = main([str(a) for a in argv])
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
        return code, capsys.readouterr().err

    return run


# ---------------------------------------------------------------- errors: the table


@dataclass
class Fault:
    """A stage's argv, the error line expected, and the outputs that must not exist afterwards."""

    argv: list[object]
    error: str  # "DataError", "SlideError"...
    names: list[str]  # what the error line must contain (file, key, id...)
    outputs: list[Path] = field(default_factory=list)


def no_truth_slide(tmp: Path) -> Fault:  # issue 11: trained as all background
    data = train_dir(tmp / "data", ("a",), csv_ids=())
    path = data / "train" / "a.tiff"
    out = tmp / "tiles"
    return Fault(
        ["tiles", "--slide", path, "--id", "a", "--data-dir", data, "--tissue", tissue_png(path, tmp),
         "--out-zarr", out / "a.zarr", "--out-csv", out / "a.csv"],
        "DataError", [str(path), "no truth", "train/a.json"], [out / "a.zarr", out / "a.csv"],
    )


def sample_id_is_a_path(tmp: Path) -> Fault:  # issue 11: read ../../x/secret.rle into the submission
    data = tmp / "data"
    slide(data / "test" / "t.tiff")
    predictions = tmp / "results" / "predictions"
    predictions.mkdir(parents=True)
    (predictions / "t.rle").write_text("1 2\n")
    secret = tmp / "x" / "secret.rle"
    secret.parent.mkdir()
    secret.write_text("SECRET\n")
    pd.DataFrame({"id": ["t", "../../x/secret"], "predicted": ""}).to_csv(data / "sample_submission.csv", index=False)
    return Fault(["submit", "--data-dir", data, "--predictions-dir", predictions, "--out", tmp / "submission.csv"],
                 "DataError", [str(data / "sample_submission.csv"), "'../../x/secret'", "[A-Za-z0-9_.-]+"],
                 [tmp / "submission.csv"])


def tiles_bad_setting(key: str, value: object) -> Callable[[Path], Fault]:  # issue 11: a bare ValueError
    def make(tmp: Path) -> Fault:
        data = train_dir(tmp / "data")
        path = data / "train" / "a.tiff"
        out = tmp / "tiles"
        return Fault(
            ["tiles", "--slide", path, "--id", "a", "--data-dir", data, "--tissue", tissue_png(path, tmp),
             "--out-zarr", out / "a.zarr", "--out-csv", out / "a.csv",
             "--settings", json.dumps({"tiles": {key: value}})],
            "ConfigError", [f"tiles.{key}"], [out / "a.zarr", out / "a.csv"],
        )

    return make


def polygons_too_large(tmp: Path) -> Fault:  # issue 11: 15x the file size in memory, unguarded
    data = train_dir(tmp / "data", ("a",), csv_ids=())
    write_bytes_sparse(data / "train" / "a.json", 40 * 2**20)
    return Fault(["truth-check", "--data-dir", data, "--out", tmp / "check.csv"], "DataError",
                 [str(data / "train" / "a.json"), f"{MAX_POLYGON_BYTES // 2**20} MiB limit"], [tmp / "check.csv"])


def bad_tiff(kind: str) -> Callable[[Path], Fault]:
    def make(tmp: Path) -> Fault:
        path = tmp / f"{kind}.tif"
        if kind == "truncated":
            slide(path)
            path.write_bytes(path.read_bytes()[:-5000])
        else:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
        return Fault(["tissue", "--slide", path, "--mask-png", tmp / "m.png", "--thumbnail-png", tmp / "t.png"],
                     "SlideError", [str(path)], [tmp / "m.png", tmp / "t.png"])

    return make


def real_fixture(name: str, words: str) -> Callable[[Path], Fault]:
    def make(tmp: Path) -> Fault:
        path = FIXTURES / name
        if not path.exists():
            pytest.skip(f"real fixture not found: {path}")
        return Fault(["tissue", "--slide", path, "--mask-png", tmp / "m.png", "--thumbnail-png", tmp / "t.png"],
                     "SlideError", [str(path), words], [tmp / "m.png", tmp / "t.png"])

    return make


def bad_train_csv(text: str, error: str, words: str) -> Callable[[Path], Fault]:
    def make(tmp: Path) -> Fault:
        data = train_dir(tmp / "data")
        (data / "train.csv").write_text(text)
        return Fault(["truth-check", "--data-dir", data, "--out", tmp / "check.csv"], error,
                     [str(data / "train.csv"), words], [tmp / "check.csv"])

    return make


def malformed_polygons(tmp: Path) -> Fault:
    data = train_dir(tmp / "data", ("a",), csv_ids=())
    (data / "train" / "a.json").write_text('[{"type": "Feature", "geometry": ')
    return Fault(["truth-check", "--data-dir", data, "--out", tmp / "check.csv"], "AnnotationError",
                 [str(data / "train" / "a.json"), "not valid JSON"], [tmp / "check.csv"])


def same_id_twice(tmp: Path) -> Fault:
    data = tmp / "data"
    slide(data / "train" / "x.tiff")
    slide(data / "test" / "x.tif")
    return Fault(["sheet", "--data-dir", data, "--out", tmp / "slides.csv"], "DataError",
                 [str(data / "test" / "x.tif"), "slide id 'x' also at"], [tmp / "slides.csv"])


def missing_data_dir(tmp: Path) -> Fault:
    return Fault(["submit", "--data-dir", tmp / "nowhere", "--predictions-dir", tmp, "--out", tmp / "s.csv"],
                 "DataError", [str(tmp / "nowhere"), "does not exist"], [tmp / "s.csv"])


def bad_settings(settings: str, words: str) -> Callable[[Path], Fault]:
    def make(tmp: Path) -> Fault:
        slide(tmp / "s.tiff")
        return Fault(["tissue", "--slide", tmp / "s.tiff", "--mask-png", tmp / "m.png", "--thumbnail-png",
                      tmp / "t.png", "--settings", settings], "ConfigError", [words], [tmp / "m.png", tmp / "t.png"])

    return make


class Pickled:
    """Unpickling this runs code: a checkpoint holding it must be refused, not loaded."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def bad_checkpoint(kind: str) -> Callable[[Path], Fault]:
    def make(tmp: Path) -> Fault:
        path = tmp / "s.tiff"
        slide(path)
        checkpoint = tmp / f"{kind}.pt"
        if kind == "pickled":
            torch.save({"format": 1, "state_dict": {}, "config": {}, "hook": Pickled()}, checkpoint)
            words = "refused: the file holds pickled Python objects"
        else:
            checkpoint.write_bytes(b"not a checkpoint")
            words = "not a readable checkpoint"
        return Fault(["predict", "--slide", path, "--tissue", tissue_png(path, tmp), "--out-zarr", tmp / "p.zarr",
                      checkpoint], "PipelineError", [str(checkpoint), words], [tmp / "p.zarr", Path("pwned")])

    return make


def missing_prediction(tmp: Path) -> Fault:
    slide(tmp / "s.tiff")
    out = [tmp / "s.rle", tmp / "s.geojson", tmp / "s.png"]
    return Fault(["encode", "--prob-zarr", tmp / "s.zarr", "--slide", tmp / "s.tiff", "--id", "s",
                  "--out-rle", out[0], "--out-geojson", out[1], "--out-png", out[2]],
                 "DataError", [str(tmp / "s.zarr"), "prediction store not found"], out)


def missing_tissue_mask(tmp: Path) -> Fault:
    data = train_dir(tmp / "data")
    out = tmp / "tiles"
    return Fault(["tiles", "--slide", data / "train" / "a.tiff", "--id", "a", "--data-dir", data,
                  "--tissue", tmp / "none.png", "--out-zarr", out / "a.zarr", "--out-csv", out / "a.csv"],
                 "DataError", [str(tmp / "none.png"), "tissue mask not found"], [out / "a.zarr", out / "a.csv"])


def missing_tile_store(tmp: Path) -> Fault:
    index = tmp / "index.csv"
    pd.DataFrame({"slide": ["a"], "tile": [0], "y0": [0], "x0": [0], "tissue": [1.0], "positive": [0.0]}).to_csv(
        index, index=False)
    out = [tmp / "scores.csv", tmp / "kept.csv"]
    return Fault(["filter", "--index", index, "--tiles-dir", tmp / "tiles", "--scores", out[0], "--kept", out[1],
                  "--work-dir", tmp / "stage1", "--settings", '{"train": {"device": "cpu"}}'],
                 "DataError", [str(tmp / "tiles" / "a.zarr"), "tile store not found"], out)


def prediction_missing_fail(tmp: Path) -> Fault:
    data = tmp / "data"
    slide(data / "test" / "t.tiff")
    (tmp / "predictions").mkdir()
    return Fault(["submit", "--data-dir", data, "--predictions-dir", tmp / "predictions", "--out", tmp / "s.csv",
                  "--settings", '{"submit": {"on_missing": "fail"}}'],
                 "DataError", [str(tmp / "predictions"), "no prediction for 1 slide(s): t"], [tmp / "s.csv"])


FAULTS: dict[str, Callable[[Path], Fault]] = {
    # issue 11
    "train slide without truth": no_truth_slide,
    "sample_submission id is a path": sample_id_is_a_path,
    "tiles.stride 0": tiles_bad_setting("stride", 0),
    "tiles.size negative": tiles_bad_setting("size", -512),
    "tiles.max_tiles_per_slide 0": tiles_bad_setting("max_tiles_per_slide", 0),
    "polygon file of 40 MB": polygons_too_large,
    "pickled checkpoint (one line)": bad_checkpoint("pickled"),  # refused, but in 6 lines of torch's text
    # held before
    "truncated TIFF": bad_tiff("truncated"),
    "not a TIFF": bad_tiff("not_a_tiff"),
    "unopenable TIFF (real)": real_fixture("unopenable.tiff", "52479"),
    "corrupt JPEG tile (real)": real_fixture("unreadable.svs", "cannot decode tile"),
    "bad RLE in train.csv": bad_train_csv("id,encoding\na,10 5 3 2\n", "RLEError", "(id a)"),
    "train.csv without encoding column": bad_train_csv("id,mask\na,1 2\n", "DataError", "expected columns"),
    "train.csv id twice": bad_train_csv("id,encoding\na,1 2\na,3 4\n", "DataError", "listed twice: a"),
    "malformed JSON polygons": malformed_polygons,
    "same id in train and test": same_id_twice,
    "missing data_dir": missing_data_dir,
    "--settings not JSON": bad_settings("{not json", "--settings is not valid JSON"),
    "unknown config key": bad_settings('{"tissue": {"downsampel": 8}}', "tissue: unknown key(s) downsampel"),
    "not a checkpoint": bad_checkpoint("junk"),
    "missing prediction store": missing_prediction,
    "missing tissue mask": missing_tissue_mask,
    "tile index without its store": missing_tile_store,
    "prediction missing, on_missing fail": prediction_missing_fail,
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_bad_input_fails_in_one_line_naming_it_and_leaves_no_output(
    case: str, tmp_path: Path, cli: Callable[..., tuple[int, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # "pwned" would land here
    fault = FAULTS[case](tmp_path)
    code, stderr = cli(*fault.argv)
    assert code == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"{fault.error}: "), stderr[-2000:]
    for name in fault.names:
        assert name in last, (name, last)
    left = [str(p) for p in fault.outputs if p.exists()]
    assert not left, f"left behind: {left}"
    partial = [p.name for p in tmp_path.rglob("*.partial")]  # pipeline.atomic's temporary names
    assert not partial, partial


def test_the_path_id_never_reaches_the_submission_through_python_m_pipeline(tmp_path: Path) -> None:
    """The same row through the real entry point: one line on stderr, exit 1, the secret not copied."""
    fault = sample_id_is_a_path(tmp_path)
    result = subprocess.run([sys.executable, "-m", "pipeline", *map(str, fault.argv)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"DataError: {tmp_path / 'data' / 'sample_submission.csv'}")
    assert not (tmp_path / "submission.csv").exists()


def test_empty_data_dir_is_an_error_naming_the_folder(tmp_path: Path) -> None:  # issue 11: ran green
    (tmp_path / "train").mkdir()
    (tmp_path / "train.csv").write_text("id,encoding\n")
    with pytest.raises(DataError) as info:
        planned_slides(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: no slides under train/ or test/")
    (tmp_path / "test").mkdir()
    slide(tmp_path / "test" / "my slide.tiff")  # only a badly named one: still nothing to run
    with pytest.raises(DataError, match="1 file\\(s\\) with unsupported names"):
        planned_slides(tmp_path)


# ---------------------------------------------------------------- warnings: reported, never silent


@pytest.mark.parametrize("name", ["my slide", "glomérule"])
def test_unsupported_slide_name_is_warned_and_listed_not_dropped(
    name: str, tmp_path: Path, cli: Callable[..., tuple[int, str]]
) -> None:  # issue 11: vanished from slides.csv and submission.csv
    data = tmp_path / "data"
    slide(data / "test" / "good.tiff")
    bad = data / "test" / f"{name}.tiff"
    slide(bad)
    warnings: list[str] = []
    planned = planned_slides(data, warn=warnings.append)
    assert list(planned) == ["good"]  # the others still run
    assert len(warnings) == 1 and warnings[0].startswith(f"{bad}: not processed: unsupported file name: ")
    assert "slide ids must match [A-Za-z0-9_.-]+" in warnings[0]
    code, stderr = cli("sheet", "--data-dir", data, "--out", tmp_path / "slides.csv")
    assert code == 0
    sheet = pd.read_csv(tmp_path / "slides.csv", dtype=str, keep_default_na=False).set_index("id")
    assert sheet.loc[name, "split"] == "test" and sheet.loc[name, "path"] == str(bad)
    assert "unsupported file name" in sheet.loc[name, "error"] and sheet.loc["good", "error"] == ""
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    (predictions / "good.rle").write_text("1 2\n")
    code, stderr = cli("submit", "--data-dir", data, "--predictions-dir", predictions, "--out", tmp_path / "s.csv")
    assert code == 0
    assert f"WARNING pipeline.submission: {bad}: not predicted and not in the submission" in stderr


def test_training_slide_without_truth_is_left_out_of_training_with_a_warning(tmp_path: Path) -> None:
    data = train_dir(tmp_path, ("a", "b", "c"), csv_ids=("a",))  # b has polygons, c has nothing
    write_hubmap_json([], data / "train" / "b.json")
    warnings: list[str] = []
    planned = planned_slides(data, warn=warnings.append)
    assert sorted(planned) == ["a", "b"]
    assert warnings == [
        f"{data / 'train' / 'c.tiff'}: no train.csv row and no train/c.json: no truth to train or validate on, "
        "so the slide is left out of training (add its truth to use it)"
    ]


def test_no_training_slide_with_truth_says_the_test_slides_are_not_predicted(tmp_path: Path) -> None:
    data = train_dir(tmp_path, ("a",), csv_ids=())
    slide(data / "test" / "t.tiff")
    warnings: list[str] = []
    assert list(planned_slides(data, warn=warnings.append)) == ["t"]
    assert warnings[-1] == f"{data / 'train'}: no training slide has truth: nothing is trained, and the 1 test " \
                           "slide(s) are not predicted"


def test_train_csv_id_without_a_slide_is_warned(tmp_path: Path) -> None:  # issue 11: ignored silently
    data = train_dir(tmp_path, ("a",))
    with open(data / "train.csv", "a") as fh:
        fh.write("ghost,1 2\n")
    problems = input_problems(data)
    assert [str(p) for p in problems] == [
        f"{data / 'train.csv'}: id 'ghost' has no slide train/ghost.tiff: its row is not used"
    ]


def test_unreadable_train_csv_does_not_stop_planning(tmp_path: Path) -> None:
    data = train_dir(tmp_path, ("a",))
    (data / "train.csv").write_text("name,encoding\na,1 2\n")
    warnings: list[str] = []
    assert list(planned_slides(data, warn=warnings.append)) == ["a"]  # the truth_check job fails naming it
    assert warnings == [f"{data / 'train.csv'}: expected columns id,encoding; found name,encoding "
                        "(training slides not checked for truth)"]


def test_greyscale_slide_warns_that_no_tissue_was_found(
    tmp_path: Path, cli: Callable[..., tuple[int, str]]
) -> None:  # issue 11: "tissue 0.0%" at INFO only
    path = tmp_path / "grey.tiff"
    rng = np.random.default_rng(0)
    grey = np.full((SIZE, SIZE), 235, np.uint8)
    grey[100:400, 80:420] = rng.integers(60, 160, (300, 340))  # dark tissue, no colour
    tifffile.imwrite(path, grey, tile=(256, 256), photometric="minisblack")
    code, stderr = cli("tissue", "--slide", path, "--mask-png", tmp_path / "m.png", "--thumbnail-png",
                       tmp_path / "t.png", "--settings", json.dumps(TISSUE))
    assert code == 0
    warning = next(line for line in stderr.splitlines() if " WARNING " in line)
    assert f"{path}: no tissue detected: the slide is greyscale" in warning
    assert "tissue.saturation_threshold: 0" in warning


def test_blank_slide_warns_with_the_other_cause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "blank.tiff"
    tifffile.imwrite(path, np.full((SIZE, SIZE, 3), (236, 232, 240), np.uint8), photometric="rgb")
    with caplog.at_level(logging.WARNING, logger="pipeline.tissue"):
        run_tissue(path, tmp_path / "m.png", tmp_path / "t.png", Config(tissue=TissueConfig(downsample=16)))
    assert f"{path}: no tissue detected: nothing stained enough" in caplog.text


def test_encode_accepts_a_dask_array() -> None:  # issue 11: TypeError on arr.chunks
    probs = np.random.default_rng(1).random((64, 80)).astype(np.float32)
    stored = zarr.create_array(store={}, shape=probs.shape, chunks=(64, 16), dtype="float32")
    stored[:] = probs
    cfg = PredictConfig()
    expected = encode_prediction(stored, (192, 240), cfg)
    assert expected  # something above 0.5
    assert encode_prediction(da.from_array(probs, chunks=(64, 16)), (192, 240), cfg) == expected
    assert encode_prediction(da.from_array(probs, chunks=(32, (30, 50))), (192, 240), cfg) == expected


def test_polygon_size_limit_is_generous_for_real_files_and_a_parameter(tmp_path: Path) -> None:
    from pipeline.annotations import read_polygons

    assert MAX_POLYGON_BYTES >= 16 * 2**20  # real HuBMAP glomerulus files are a few MB
    path = tmp_path / "a.json"
    write_hubmap_json([], path)
    assert read_polygons(path) == []
    with pytest.raises(DataError, match="a.json: polygon file of 0.0 MiB is over the 0 MiB limit"):
        read_polygons(path, max_bytes=1)


def test_max_tiles_per_slide_is_documented_as_what_it_does() -> None:  # issue 11: said "random subsample"
    import dataclasses
    import inspect

    source = inspect.getsource(TilesConfig)
    comment = source.split("max_tiles_per_slide: int | None = None  # ")[1].splitlines()[0]
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    described = schema["properties"]["tiles"]["properties"]["max_tiles_per_slide"]["description"]
    readme = (REPO / "config" / "README.md").read_text()
    assert described == comment and f"| {comment} |" in readme
    assert "centred windows (glomeruli) first" in comment and "random" not in comment
    # and the behaviour it describes: under a cap of 2, the centred window stays, then the most tissue
    from pipeline.tiles import select_windows
    from pipeline.tissue import TissueMask

    mask = np.zeros((32, 32), bool)
    mask[:, :8] = True
    tissue = TissueMask(mask=mask, downsample=16.0, thumbnail=np.zeros((32, 32, 3), np.uint8))
    grid = pd.DataFrame({"y0": [0, 0, 0], "x0": [0, 128, 256], "tissue": [1.0, 0.5, 0.0]})
    centred = pd.DataFrame({"y0": [300], "x0": [300]})
    cfg = dataclasses.replace(TilesConfig(size=128), max_tiles_per_slide=2)
    kept = select_windows(grid, centred, tissue, cfg)
    assert list(zip(kept["y0"], kept["x0"], kept["centred"])) == [(0, 0, False), (300, 300, True)]


# ---------------------------------------------------------------- at planning, in Snakemake


def _dry_run(workdir: Path) -> subprocess.CompletedProcess[str]:
    (workdir / "config.yaml").write_text(yaml.safe_dump(TINY_SETTINGS))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
         "--configfile", str(workdir / "config.yaml"), "--cores", "1", "--dry-run"],
        capture_output=True, text=True, env=env, timeout=120,
    )


def test_snakemake_warns_at_planning_and_leaves_the_truthless_slide_out(tmp_path: Path) -> None:
    data = train_dir(tmp_path / "data", ("a", "b", "c"), csv_ids=("a", "b"))
    slide(data / "test" / "t.tiff")
    slide(data / "test" / "my slide.tiff")
    with open(data / "train.csv", "a") as fh:
        fh.write("ghost,1 2\n")
    result = _dry_run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "data/test/my slide.tiff: not processed: unsupported file name" in out
    assert "data/train/c.tiff: no train.csv row and no train/c.json" in out
    assert "data/train.csv: id 'ghost' has no slide" in out
    stats = dict(line.split() for line in out.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:])
    assert stats["tiles"] == "2" and stats["oof"] == "2"  # a and b; c neither tiled nor validated
    assert stats["predict"] == "1"  # t; "my slide" not


def test_snakemake_refuses_an_empty_data_dir_at_planning(tmp_path: Path) -> None:
    (tmp_path / "data" / "train").mkdir(parents=True)
    result = _dry_run(tmp_path)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "DataError" in out and "data: no slides under train/ or test/" in out
