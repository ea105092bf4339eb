"""Train HSI-VAR on Ray: stage 1 VQ-VAE → stage 2 transformer + condition + DAG + refiner → stage 3 decoder + SSA.

On a cluster::

    ray job submit --working-dir . -- python jobs/train_var.py --config configs/small.yaml

On one machine (starts a local Ray)::

    python jobs/train_var.py --config configs/tiny.yaml [--stage var] [--set train.vqvae.steps=50] [--run.name x]

A rerun with the same ``run.name`` resumes every stage from its last checkpoint. See docs/training.md.
"""

from __future__ import annotations

import sys

from hsivar_platform.train import main

if __name__ == "__main__":
    sys.exit(main())
