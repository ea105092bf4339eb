"""The Ray Serve HTTP app: ``POST /v1/restore``, ``GET /v1/model``, ``GET /healthz`` (see :mod:`.app`).

``deploy/serve.yaml`` names ``hsivar_platform.serve:app_builder``.
"""

from hsivar_platform.serve.app import (
    DEPLOYMENT_NAME,
    GATEWAY_OPTIONS,
    MODEL_DEPLOYMENT_NAME,
    RETRY_AFTER_S,
    HSIVARModel,
    HSIVARService,
    ServeSettings,
    app_builder,
    build_app,
)

__all__ = ["DEPLOYMENT_NAME", "GATEWAY_OPTIONS", "HSIVARModel", "HSIVARService", "MODEL_DEPLOYMENT_NAME",
           "RETRY_AFTER_S", "ServeSettings", "app_builder", "build_app"]
