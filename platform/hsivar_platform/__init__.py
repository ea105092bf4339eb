"""hsivar_platform: the Ray layer of hsivar (data pipelines, training, tracking, batch and Serve).

It lives in ``platform/hsivar_platform`` and is imported as ``hsivar_platform``; ``platform/`` itself
is deliberately not a package, so the standard library's ``platform`` module is never shadowed.
Imports point one way: ``jobs -> hsivar_platform -> hsivar``.
"""

__all__: list[str] = []
