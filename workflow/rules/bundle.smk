# The model bundle a training run ends in (fold checkpoints + model card), and its promotion
# to the serving bundle of nightly predict-only runs (config promote_to).


rule bundle:
    input:
        models=[str(RESULTS / "models" / f"fold{k}" / "model.pt") for k in FOLDS],
        choice=RESULTS / "evaluation" / "threshold.json",
        oof=RESULTS / "evaluation" / "oof.csv",
    output:
        directory(RESULTS / "bundle"),
    log:
        LOGS / "bundle" / "bundle.log",
    benchmark:
        BENCHMARKS / "bundle" / "bundle.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        # the whole config but where the run writes: the card records it
        settings=settings(
            "data_dir",
            "slides",
            "tissue",
            "tiles",
            "model",
            "train",
            "filter",
            "predict",
            "submit",
        ),
        folds=json.dumps(FOLD_OF, sort_keys=True),
    shell:
        "python -m pipeline bundle --out {output} --threshold-json {input.choice}"
        " --oof-csv {input.oof} --folds {params.folds:q} --settings {params.settings:q}"
        " {input.models} 2> {log}"


rule promote:
    input:
        RESULTS / "bundle",
    output:
        RESULTS / "promotion.json",
    log:
        LOGS / "promote" / "promote.log",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        serving=config["promote_to"] or "",
    shell:
        "python -m pipeline promote --bundle {input} --serving {params.serving:q}"
        " --out {output} 2> {log}"
