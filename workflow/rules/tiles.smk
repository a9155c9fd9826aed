# Training tiles per slide (1536 px windows over tissue -> 512 px) and their index.


rule tiles:
    input:
        slide=slide_path,
        tissue=RESULTS / "tissue" / "{id}.png",
        truth=truth_inputs,
    output:
        store=directory(RESULTS / "tiles" / "{id}.zarr"),
        index=RESULTS / "tiles" / "{id}.csv",
    log:
        LOGS / "tiles" / "{id}.log",
    benchmark:
        BENCHMARKS / "tiles" / "{id}.tsv"
    conda:
        "../../environment.yml"
    threads: config["tiles"]["workers"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        data_dir=DATA,
        settings=settings("slides.backend", "tiles"),
    shell:
        "python -m pipeline tiles --slide {input.slide} --id {wildcards.id}"
        " --data-dir {params.data_dir} --tissue {input.tissue}"
        " --out-zarr {output.store} --out-csv {output.index}"
        " --settings {params.settings:q} 2> {log}"


rule tile_index:
    input:
        [str(RESULTS / "tiles" / f"{i}.csv") for i in TRAIN_IDS],
    output:
        RESULTS / "tiles" / "index.csv",
    log:
        LOGS / "tile_index" / "tile_index.log",
    benchmark:
        BENCHMARKS / "tile_index" / "tile_index.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m pipeline tile-index --out {output} {input} 2> {log}"
