# Training, one job per fold (folds grouped by donor, else by slide).


rule train:
    input:
        index=RESULTS / "filter" / "kept.csv",
        all_tiles=RESULTS / "tiles" / "index.csv",
        stores=tile_stores,
        weights=encoder_weights,
    output:
        model=RESULTS / "models" / "fold{fold}" / "model.pt",
        metrics=RESULTS / "models" / "fold{fold}" / "metrics.csv",
        curves=report(
            RESULTS / "models" / "fold{fold}" / "curves.png",
            category="Training",
            subcategory="fold {fold}",
            caption="../report/curves.rst",
        ),
    log:
        LOGS / "train" / "fold{fold}.log",
    benchmark:
        BENCHMARKS / "train" / "fold{fold}.tsv"
    conda:
        "../../environment.yml"
    threads: workflow.cores
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=1,
    params:
        tiles_dir=RESULTS / "tiles",
        out_dir=lambda wc: RESULTS / "models" / f"fold{wc.fold}",
        # the tile geometry too: the checkpoint records the scale it was trained at
        settings=settings(
            "slides.normalise", "tiles.size", "tiles.out_size", "model", "train"
        ),
        folds=json.dumps(FOLD_OF, sort_keys=True),
    shell:
        "python -m pipeline train --index {input.index} --val-index {input.all_tiles}"
        " --tiles-dir {params.tiles_dir} --fold {wildcards.fold} --out-dir {params.out_dir}"
        " --folds {params.folds:q} --settings {params.settings:q} 2> {log}"
