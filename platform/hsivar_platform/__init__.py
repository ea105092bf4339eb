"""hsivar_platform: the Ray layer of hsivar — training, batch restoration, Serve, evaluation, the demo.

It lives in ``platform/hsivar_platform`` and is imported as ``hsivar_platform``; ``platform/`` itself
is deliberately not a package, so the standard library's ``platform`` module is never shadowed.
Imports point one way: ``jobs -> hsivar_platform -> hsivar``.

One subpackage per job (:mod:`.train`, :mod:`.batch`, :mod:`.serve`, :mod:`.evaluate`, :mod:`.demo`)
and the one Typer app (:mod:`.cli`); shared by all of them: :mod:`.ray_runtime` (the one way to reach
Ray), :mod:`.console`, :mod:`.model_uri`, :mod:`.storage`, :mod:`.tracking`, :mod:`.pipeline_config`,
:mod:`.data`; helpers for tests and benchmarks in :mod:`.testing`.
"""

__all__: list[str] = []
