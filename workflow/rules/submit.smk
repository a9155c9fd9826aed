# The Kaggle submission and its evaluation against known truth.


rule submit:
    input:
        rles=[str(RESULTS / "predictions" / f"{i}.rle") for i in TEST_IDS],
        sample=optional(DATA / SAMPLE_SUBMISSION_CSV),
    output:
        RESULTS / "submission.csv",
    log:
        LOGS / "submit" / "submit.log",
    benchmark:
        BENCHMARKS / "submit" / "submit.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        data_dir=DATA,
        predictions_dir=RESULTS / "predictions",
        settings=settings("submit"),
    shell:
        "python -m pipeline submit --data-dir {params.data_dir}"
        " --predictions-dir {params.predictions_dir} --out {output}"
        " --settings {params.settings:q} 2> {log}"


rule evaluate:
    input:
        submission=RESULTS / "submission.csv",
        truth=optional(DATA / TEST_TRUTH_CSV),
    output:
        report(
            RESULTS / "evaluation" / "dice.csv",
            category="Evaluation",
            caption="../report/dice.rst",
        ),
    log:
        LOGS / "evaluate" / "evaluate.log",
    benchmark:
        BENCHMARKS / "evaluate" / "evaluate.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        data_dir=DATA,
        settings=settings("slides.backend"),
    shell:
        "python -m pipeline evaluate --data-dir {params.data_dir}"
        " --submission {input.submission} --out {output}"
        " --settings {params.settings:q} 2> {log}"
