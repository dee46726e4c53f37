"""The local stand-ins for AWS: kinesalite for Kinesis, moto's server for DynamoDB, IAM and STS.

Both listen on 127.0.0.1 only and run as processes of their own, so the benchmarks
can read their CPU time and a consumer never shares an interpreter with them.
Kinesis goes to kinesalite because moto's PutRecords slows down as a shard fills.
``AWS_ENDPOINT_URL_KINESIS`` and ``AWS_ENDPOINT_URL`` route botocore clients (ours and
the peer's) to the two, and fixed dummy credentials keep every client off real AWS.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.processes import children_of, stop_process
from tests.tools.kinesalite import REGION, run_kinesalite

HOST: Final = "127.0.0.1"
MOTO_START_TIMEOUT_SECONDS: Final = 30.0
# moto accepts any credentials; these are the values its documentation uses.
CREDENTIALS: Final = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Variables that could send a client to a real account or to an instance metadata service.
CLEARED_VARIABLES: Final = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE")


class StandInError(RuntimeError):
    """A stand-in did not start or did not respond."""


@dataclass(frozen=True)
class StandIns:
    """Endpoints and process ids of the running stand-ins."""

    kinesis_url: str
    moto_url: str
    kinesalite_pid: int | None
    moto_pid: int
    region: str = REGION

    def environment(self) -> dict[str, str]:
        """Return the variables that point botocore clients at the stand-ins."""
        return {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL_KINESIS": self.kinesis_url,
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def child_environment(self) -> dict[str, str]:
        """Return this process's environment with the stand-in variables applied, for a child process."""
        environment = {k: v for k, v in os.environ.items() if k not in CLEARED_VARIABLES}
        environment.update(self.environment())
        return environment


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _moto_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2) as response:  # noqa: S310 - loopback URL built here
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def running_moto_server(log_path: Path) -> Iterator[tuple[str, int]]:
    """Run ``moto_server`` on a free loopback port; yield its URL and process id."""
    port = _free_port()
    url = f"http://{HOST}:{port}"
    moto_server = Path(sys.executable).with_name("moto_server")
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed command from this virtual environment
            [str(moto_server), "-H", HOST, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + MOTO_START_TIMEOUT_SECONDS
            while not _moto_answers(url):
                if process.poll() is not None:
                    raise StandInError(f"moto_server exited with status {process.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise StandInError(
                        f"moto_server at {url} did not respond within {MOTO_START_TIMEOUT_SECONDS} s; see {log_path}"
                    )
                time.sleep(0.1)
            yield url, process.pid
        finally:
            stop_process(process)


def _kinesalite_pid() -> int | None:
    """Return the id of the kinesalite node process started by this process, if there is one."""
    for pid, command in children_of(os.getpid()):
        if "kinesalite" in command:
            return pid
    return None


@contextmanager
def running_stand_ins(log_directory: Path) -> Iterator[StandIns]:
    """Start kinesalite and moto's server and set this process's environment to use them."""
    log_directory.mkdir(parents=True, exist_ok=True)
    with run_kinesalite() as kinesis_url, running_moto_server(log_directory / "moto_server.log") as (moto_url, moto):
        stand_ins = StandIns(kinesis_url, moto_url, _kinesalite_pid(), moto)
        saved = dict(os.environ)
        for name in CLEARED_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(stand_ins.environment())
        try:
            yield stand_ins
        finally:
            os.environ.clear()
            os.environ.update(saved)
