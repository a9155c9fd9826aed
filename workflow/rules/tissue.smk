# Tissue detection at low resolution, per slide.


rule tissue:
    input:
        slide_path,
    output:
        mask=RESULTS / "tissue" / "{id}.png",
        thumbnail=RESULTS / "tissue" / "{id}.thumb.png",
    log:
        LOGS / "tissue" / "{id}.log",
    benchmark:
        BENCHMARKS / "tissue" / "{id}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        settings=settings("slides.backend", "tissue"),
        whole_image="" if LAYOUT == "kaggle" else "--whole-image",  # a patch is all region of interest
    shell:
        "python -m pipeline tissue --slide {input} --mask-png {output.mask}"
        " --thumbnail-png {output.thumbnail} {params.whole_image}"
        " --settings {params.settings:q} 2> {log}"
