# Run hooks: the results_dir lock, the leftovers of killed jobs, the submission after a failure.

from snakemake.logging import logger

from pipeline.atomic import remove_stale_partials
from pipeline.errors import PipelineError
from pipeline.partial_submission import write_partial_submission as partial_submission
from pipeline.runlock import RunLock

# Held from onstart to onsuccess/onerror (dropped by the kernel if this process dies).
RUN_LOCK = RunLock(RESULTS)


def start_run():
    """onstart: lock results_dir (a live run on it stops this one), then clear killed jobs' temporaries."""
    previous = RUN_LOCK.acquire()
    if previous is not None:
        logger.warning(
            f"{RUN_LOCK.path}: taking over the lock of a run that ended without releasing it ({previous})"
        )
    for path in remove_stale_partials(RESULTS):
        logger.warning(
            f"{path}: removed, the temporary output of a job that was killed"
        )


def end_run():
    """onsuccess: release results_dir."""
    RUN_LOCK.release()


def end_failed_run():
    """onerror: the submission of what is up to date, then release results_dir."""
    try:
        write_partial_submission()
    finally:
        RUN_LOCK.release()


def up_to_date_predictions():
    """(whether this run was to (re)write submission.csv, the test ids whose .rle is up to date).

    Snakemake's own judgement in this run: an encode job that needed no run, or ran to the end.
    """
    dag = workflow.dag
    due, fresh = False, set()
    for job in dag.jobs:
        if job.rule.name == "submit" and not dag.noneedrun_finished(job):
            due = True
        elif job.rule.name == "encode" and dag.noneedrun_finished(job):
            fresh.add(job.wildcards_dict["id"])
    return due, fresh


def write_partial_submission():
    """After a failed run: submission.csv of the up-to-date predictions only, naming the others.

    A predictions/{id}.rle left by an earlier run (older models or settings) never goes in:
    its slide gets an empty mask and is named. With none up to date, or with
    ``submit.on_missing: fail``, the outdated submission.csv is removed. The failed jobs
    keep Snakemake's exit status non-zero and their errors stay in their logs.
    """
    if not TEST_IDS:
        return
    try:
        due, fresh = up_to_date_predictions()
    except (AttributeError, KeyError) as err:
        # Snakemake's DAG API changed: ship nothing rather than something stale
        logger.warning(
            f"cannot tell which predictions are up to date ({err!r}); none is used"
        )
        due, fresh = True, set()
    if not due:
        return
    submission = RESULTS / "submission.csv"
    if config["submit"]["on_missing"] == "warn":
        try:
            message = partial_submission(
                DATA, RESULTS / "predictions", submission, fresh
            ).message()
        except PipelineError as err:  # e.g. a bad sample_submission.csv: no submission
            submission.unlink(missing_ok=True)
            message = f"{submission}: removed, outdated; no partial submission: {err}"
    else:
        submission.unlink(missing_ok=True)
        message = f"{submission}: removed, outdated (submit.on_missing: fail writes no partial submission)"
    log = LOGS / "submit" / "partial_submission.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(message + "\n")
    logger.warning(message)
