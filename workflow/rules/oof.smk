# Whole-slide out-of-fold validation: each training slide through the model of the fold that
# validated on it, then the Kaggle Dice per slide and the threshold for predict.threshold: auto.


rule oof:
    input:
        slide=slide_path,
        tissue=RESULTS / "tissue" / "{id}.png",
        model=fold_model_of,
        truth=truth_inputs,
    output:
        prob=directory(RESULTS / "oof" / "{id}.zarr"),
        counts=RESULTS / "oof" / "{id}.csv",
    log:
        LOGS / "oof" / "{id}.log",
    benchmark:
        BENCHMARKS / "oof" / "{id}.tsv"
    conda:
        "../../environment.yml"
    threads: workflow.cores
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=1,
    params:
        data_dir=DATA,
        settings=settings("slides.backend", "predict"),
    shell:
        "python -m pipeline oof --slide {input.slide} --id {wildcards.id}"
        " --checkpoint {input.model} --tissue {input.tissue} --data-dir {params.data_dir}"
        " --out-zarr {output.prob} --out-csv {output.counts}"
        " --settings {params.settings:q} 2> {log}"


rule oof_summary:
    input:
        counts=[str(RESULTS / "oof" / f"{i}.csv") for i in OOF_IDS],
        maps=[str(RESULTS / "oof" / f"{i}.zarr") for i in OOF_IDS],
        truth=optional(DATA / TRAIN_CSV)
        + [str(p) for i in OOF_IDS if (p := polygons_path(DATA, i))],
    output:
        oof=report(
            RESULTS / "evaluation" / "oof.csv",
            category="Evaluation",
            caption="../report/oof.rst",
        ),
        curve=report(
            RESULTS / "evaluation" / "oof_thresholds.csv",
            category="Evaluation",
            caption="../report/oof_thresholds.rst",
        ),
        choice=RESULTS / "evaluation" / "threshold.json",
    log:
        LOGS / "oof_summary" / "oof_summary.log",
    benchmark:
        BENCHMARKS / "oof_summary" / "oof_summary.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        oof_dir=RESULTS / "oof",
        data_dir=DATA,
        settings=settings("slides.backend", "predict"),
    shell:
        "python -m pipeline oof-summary --oof-dir {params.oof_dir} --data-dir {params.data_dir}"
        " --out {output.oof} --curve {output.curve} --threshold-json {output.choice}"
        " --settings {params.settings:q} {input.counts} 2> {log}"
