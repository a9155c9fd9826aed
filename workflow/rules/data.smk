# The slide sheet and the ground-truth check.


rule slide_sheet:
    input:
        # badly named slide files too: slides.csv records them with their error
        [str(s.path) for s in SLIDES.values()]
        + [str(p) for p in unsupported_slide_files(DATA)],
    output:
        RESULTS / "slides.csv",
    log:
        LOGS / "slide_sheet" / "slide_sheet.log",
    benchmark:
        BENCHMARKS / "slide_sheet" / "slide_sheet.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        data_dir=DATA,
        settings=settings("slides.backend"),
    shell:
        "python -m pipeline sheet --data-dir {params.data_dir} --out {output}"
        " --settings {params.settings:q} 2> {log}"


rule truth_check:
    input:
        slides=[str(SLIDES[i].path) for i in TRAIN_IDS],
        truth=optional(DATA / TRAIN_CSV)
        + [str(p) for i in TRAIN_IDS if (p := polygons_path(DATA, i))],
    output:
        report(
            RESULTS / "truth" / "check.csv",
            category="Data",
            caption="../report/truth_check.rst",
        ),
    log:
        LOGS / "truth_check" / "truth_check.log",
    benchmark:
        BENCHMARKS / "truth_check" / "truth_check.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        data_dir=DATA,
        settings=settings("slides.backend"),
    shell:
        "python -m pipeline truth-check --data-dir {params.data_dir} --out {output}"
        " --settings {params.settings:q} 2> {log}"
