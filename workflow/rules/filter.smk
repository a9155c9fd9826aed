# The first ("pretrained") pass: score every training tile, drop the trivial ones.


rule filter:
    input:
        index=RESULTS / "tiles" / "index.csv",
        stores=tile_stores,
        weights=filter_weights,
    output:
        scores=RESULTS / "filter" / "scores.csv",
        kept=RESULTS / "filter" / "kept.csv",
    log:
        LOGS / "filter" / "filter.log",
    benchmark:
        BENCHMARKS / "filter" / "filter.tsv"
    conda:
        "../../environment.yml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    params:
        tiles_dir=RESULTS / "tiles",
        work_dir=RESULTS / "filter" / "stage1",
        settings=settings("slides.normalise", "model", "train", "filter"),
    shell:
        "python -m pipeline filter --index {input.index} --tiles-dir {params.tiles_dir}"
        " --scores {output.scores} --kept {output.kept} --work-dir {params.work_dir}"
        " --settings {params.settings:q} 2> {log}"
