"""hsivar: HSI-VAR, all-in-one hyperspectral image restoration by next-scale prediction.

The model library: torch and numpy only (no Ray, MLflow or s3fs). Nothing runs at import time.
"""

__version__ = "0.1.0"
