"""Evaluate a published HSI-VAR model on the seeded all-in-one test protocol with Ray Data.

    python jobs/evaluate.py --model work/runs/hsivar-tiny/decoder/latest --data demo --out work/eval

Writes OUT/metrics.csv (task, level, method, psnr, ssim, sam, ergas, seconds_per_cube, …) and
OUT/metrics.md, and logs both to MLflow. ``--model`` also takes ``s3://…`` and ``models:/NAME/VERSION``.
"""

from __future__ import annotations

import sys

from hsivar_platform.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
