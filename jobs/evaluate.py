"""Evaluate a published HSI-VAR model on the seeded all-in-one test protocol with Ray Data.

    python jobs/evaluate.py --model work/runs/hsivar-tiny/decoder/latest --data demo --out work/eval

The same flags as ``hsivar evaluate`` (``--help``). Writes OUT/metrics.csv (task, level, method, psnr, ssim,
sam, ergas, seconds_per_cube, …) and OUT/metrics.md, and logs both to MLflow. ``--model`` also takes
``s3://…`` and ``models:/NAME/VERSION``.
"""

from hsivar_platform.cli import evaluate, run_job

if __name__ == "__main__":
    run_job(evaluate, "evaluate.py")
