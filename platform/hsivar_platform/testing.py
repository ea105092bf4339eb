"""Helpers for tests and benchmarks (not used by the jobs): a local S3-compatible server and output checksums.

Needs the ``dev`` extra (``moto[server]``) for :func:`local_s3_server`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from hsivar.io import detect_format
from hsivar_platform import storage


def output_checksum(uri: str) -> str:
    """sha256 of a batch output at ``uri`` as :func:`hsivar_platform.batch.output.write_output` computes it
    (ENVI: the data file ``.img`` then the header)."""
    data = [uri[: -len(".hdr")] + ".img"] if detect_format(uri) == "envi" and uri.lower().endswith(".hdr") else []
    return storage.sha256(*data, uri)


@contextmanager
def local_s3_server(access_key: str = "local", secret_key: str = "local") -> Iterator[str]:
    """A local S3-compatible server (moto, in-process threads) on 127.0.0.1 and a free port; → its endpoint URL.

    For tests and benchmarks (needs the ``dev`` extra's ``moto[server]``). Exports ``AWS_ENDPOINT_URL``,
    the given dummy credentials, a region and ``AWS_EC2_METADATA_DISABLED=true`` into ``os.environ``,
    so start it before Ray: Ray workers inherit the driver's environment. Stops the server on exit.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    })
    try:
        yield endpoint
    finally:
        server.stop()
