"""Start kinesalite (a Kinesis emulator) on 127.0.0.1 for the length of a ``with`` block.

Use it where moto does not behave like Kinesis (shard splits, closed shards, realistic
sequence numbers). It serves only Kinesis: point other services at moto. Streams start in
CREATING, so wait for ACTIVE before writing. State lives in memory and ends with the process.
"""

from __future__ import annotations

import http.client
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Final

from tests.tools.paths import kinesalite_command

REGION: Final = "eu-west-1"
START_TIMEOUT_SECONDS: Final = 20.0
STOP_TIMEOUT_SECONDS: Final = 5.0
LISTENING_PREFIX: Final = "kinesalite listening on "


class KinesaliteError(RuntimeError):
    """kinesalite did not start or did not respond to requests."""


def _first_line(stream: IO[str], timeout: float) -> str | None:
    """Return the first line printed on ``stream``, or None if none came within ``timeout``."""
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True)
    reader.start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return None


def _answers(endpoint: str) -> bool:
    """Send a ListStreams request and return whether kinesalite responded with HTTP 200."""
    host_port = endpoint.removeprefix("http://")
    connection = http.client.HTTPConnection(host_port, timeout=2)
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "Kinesis_20131202.ListStreams",
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential=testing/20200101/{REGION}/kinesis/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0"
        ),
        "X-Amz-Date": "20200101T000000Z",
    }
    try:
        connection.request("POST", "/", body="{}", headers=headers)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, 15)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, 9)
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


@contextmanager
def run_kinesalite(port: int | None = None) -> Iterator[str]:
    """Run kinesalite on 127.0.0.1 and yield its endpoint URL, ``http://127.0.0.1:PORT``.

    With ``port=None`` the operating system picks a free port, so parallel tests never
    collide. The node process gets ``AWS_REGION=eu-west-1`` so stream ARNs name that region.
    It is stopped by its PID on exit, with SIGKILL if SIGTERM is not enough.
    """
    environment = {**os.environ, "AWS_REGION": REGION}
    process = subprocess.Popen(
        kinesalite_command(port or 0),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = _first_line(process.stdout, START_TIMEOUT_SECONDS)
        if not line or not line.startswith(LISTENING_PREFIX):
            _stop(process)
            stderr = process.stderr.read() if process.stderr else ""
            raise KinesaliteError(
                f"kinesalite did not start within {START_TIMEOUT_SECONDS} s: {line!r} {stderr.strip()}"
            )
        endpoint = line.removeprefix(LISTENING_PREFIX).strip()

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _answers(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise KinesaliteError(
                    f"kinesalite at {endpoint} did not respond to ListStreams within {START_TIMEOUT_SECONDS} s"
                )
            time.sleep(0.1)
        yield endpoint
    finally:
        _stop(process)
