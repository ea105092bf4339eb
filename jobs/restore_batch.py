"""Batch restoration job: every cube under --input restored into --output, with a manifest.

    ray job submit --working-dir . -- python jobs/restore_batch.py \
        --input s3://archive/raw/ --output s3://archive/restored/ --model models:/hsivar@production

The same flags as ``hsivar restore`` (``--help``); the work is :func:`hsivar_platform.batch.run_batch`.
Exit status: 0 when the run finished (failed inputs are in the manifest), 1 with ``--fail-on-error``
when any input failed, 2 for unusable options or a missing model.
"""

from hsivar_platform.cli import restore, run_job

if __name__ == "__main__":
    run_job(restore, "restore_batch.py")
