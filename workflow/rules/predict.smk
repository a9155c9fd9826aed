# Whole-slide prediction (sliding-window consensus) and its encoding, per test slide.


rule predict:
    input:
        slide=slide_path,
        tissue=RESULTS / "tissue" / "{id}.png",
        models=fold_models,
        threshold=threshold_choice,
    output:
        directory(RESULTS / "predictions" / "{id}.zarr"),
    log:
        LOGS / "predict" / "{id}.log",
    benchmark:
        BENCHMARKS / "predict" / "{id}.tsv"
    conda:
        "../../environment.yml"
    threads: workflow.cores
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=1,
    params:
        settings=settings("slides.backend", "predict"),
        threshold=lambda wildcards, input: (
            f"--threshold-json {input.threshold}" if input.threshold else ""
        ),
    shell:
        "python -m pipeline predict --slide {input.slide} --tissue {input.tissue}"
        " --out-zarr {output} {params.threshold} --settings {params.settings:q}"
        " {input.models} 2> {log}"


rule encode:
    input:
        prob=RESULTS / "predictions" / "{id}.zarr",
        slide=slide_path,
        tissue=RESULTS / "tissue" / "{id}.png",
    output:
        rle=RESULTS / "predictions" / "{id}.rle",
        geojson=RESULTS / "predictions" / "{id}.geojson",
        png=report(
            RESULTS / "predictions" / "{id}.png",
            category="Predictions",
            caption="../report/overlay.rst",
        ),
        objects=RESULTS / "predictions" / "{id}.objects.csv",
        summary=RESULTS / "predictions" / "{id}.summary.csv",
        sizes=report(
            RESULTS / "predictions" / "{id}.sizes.png",
            category="Glomeruli",
            caption="../report/sizes.rst",
        ),
    log:
        LOGS / "encode" / "{id}.log",
    benchmark:
        BENCHMARKS / "encode" / "{id}.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        data_dir=DATA,
        settings=settings("slides.backend", "predict"),
    shell:
        "python -m pipeline encode --prob-zarr {input.prob} --slide {input.slide}"
        " --id {wildcards.id} --data-dir {params.data_dir}"
        " --out-rle {output.rle} --out-geojson {output.geojson} --out-png {output.png}"
        " --tissue {input.tissue} --out-objects {output.objects}"
        " --out-summary {output.summary} --out-sizes {output.sizes}"
        " --settings {params.settings:q} 2> {log}"


rule mask_png:
    input:
        rle=RESULTS / "predictions" / "{id}.rle",
        slide=slide_path,
    output:
        RESULTS / "predictions" / "masks" / "{id}.png",
    log:
        LOGS / "mask_png" / "{id}.log",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        settings=settings("slides.backend"),
    shell:
        "python -m pipeline mask-png --rle {input.rle} --slide {input.slide} --out {output}"
        " --settings {params.settings:q} 2> {log}"
