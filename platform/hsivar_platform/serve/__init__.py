"""The Ray Serve HTTP app: ``POST /v1/restore``, ``GET /v1/model``, ``GET /healthz`` (see :mod:`.app`).

``deploy/serve.yaml`` names ``hsivar_platform.serve:app_builder``.
"""

from hsivar_platform.serve.app import DEPLOYMENT_NAME, HSIVARService, ServeSettings, app_builder, build_app

__all__ = ["DEPLOYMENT_NAME", "HSIVARService", "ServeSettings", "app_builder", "build_app"]
