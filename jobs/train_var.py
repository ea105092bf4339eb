"""Train HSI-VAR on Ray: stage 1 VQ-VAE → stage 2 transformer + condition + DAG + refiner → stage 3 decoder + SSA.

On a cluster::

    ray job submit --working-dir . -- python jobs/train_var.py --config configs/small.yaml

On one machine (starts a local Ray)::

    python jobs/train_var.py --config configs/tiny.yaml [--stage var] [--set train.vqvae.steps=50] [--run.name x]

The same flags as ``hsivar train`` (``--help``). A rerun with the same ``run.name`` resumes every stage from
its last checkpoint. See docs/training.md.
"""

from hsivar_platform.cli import run_job, train

if __name__ == "__main__":
    run_job(train, "train_var.py", extra_args=True)
