"""The embedded AWS endpoint: moto's server on 127.0.0.1.

moto serves Kinesis, DynamoDB, IAM and STS on one port and accepts any credentials.
It replaces AWS on a machine without an account. It does not emulate Kinesis
resharding faithfully, throttling, iterator expiry or partial PutRecords failures; the
README lists what the tests use instead.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

DEFAULT_PORT: Final = 4566
HOST: Final = "127.0.0.1"
# moto accepts any credentials; these are the values its documentation uses.
CREDENTIALS: Final = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class PortInUseError(OSError):
    """The emulator's port on 127.0.0.1 is taken by another process."""


def check_port_free(port: int) -> None:
    """Raise PortInUseError unless ``port`` can be bound on 127.0.0.1.

    moto's threaded server reports a bind failure only in its own thread and then waits
    forever, so the port is checked before it starts.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The server sets SO_REUSEADDR too, so a port left in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            raise PortInUseError(
                f"cannot listen on {HOST}:{port}: {error.strerror}; choose another port with --port"
            ) from error


@contextmanager
def running_emulator(port: int | None = None) -> Iterator[str]:
    """Run moto's server on 127.0.0.1 in a background thread; yield its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at info, which would drown the caller's output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if port is None:
        port = free_port()
    else:
        check_port_free(port)
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.stop()


def environment_lines(endpoint_url: str, region: str) -> list[str]:
    """Return the ``export`` lines that point AWS clients at the emulator."""
    lines = [
        f"export AWS_ENDPOINT_URL={endpoint_url}",
        f"export AWS_REGION={region}",
        f"export AWS_DEFAULT_REGION={region}",
    ]
    lines += [f"export {name}={value}" for name, value in CREDENTIALS.items()]
    return lines
