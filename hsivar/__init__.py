"""hsivar: HSI-VAR, all-in-one hyperspectral image restoration by next-scale prediction.

The model library, without Ray, MLflow or s3fs (those belong to the platform layer, ``hsivar_platform``).
Nothing runs at import time, and each submodule imports only what it uses. Its dependencies
(``pyproject.toml``):

* model, training and restoration: torch, numpy, einops, safetensors (published weights), pydantic
  (typed configs);
* cube I/O (:mod:`hsivar.io`): rasterio (GeoTIFF), h5py (HDF5, MATLAB v7.3), scipy (MATLAB v5),
  spectral (ENVI), fsspec (local paths, ``file://`` and other fsspec URLs; ``s3://`` needs s3fs, which
  only the platform installs);
* degradations, metrics and baselines: scipy, scikit-image;
* demo cubes (:mod:`hsivar.synth`): colour-science (reflectance spectra, daylight), scikit-image
  (photographs, colour conversion);
* report figures (:mod:`hsivar.render`): matplotlib;
* command line: typer.

Optional: pyiqa, with torchvision, for the perceptual metrics of :mod:`hsivar.perceptual`
(``pip install 'hsivar[iqa]'``).
"""

__version__ = "0.1.0"
