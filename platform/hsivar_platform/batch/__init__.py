"""Batch restoration of a bucket prefix with Ray Data: options, the job, its manifest and output keys."""

from hsivar_platform.batch.job import run_batch
from hsivar_platform.batch.keys import UnsafeKeyError, relative_key, uncertainty_uri
from hsivar_platform.batch.manifest import MANIFEST_NAME, read_manifest
from hsivar_platform.batch.options import BatchOptions, BatchReport

__all__ = ["MANIFEST_NAME", "BatchOptions", "BatchReport", "UnsafeKeyError", "read_manifest", "relative_key",
           "run_batch", "uncertainty_uri"]
