"""The processor's HTTP port: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes.

- ``/metrics``: every metric of metrics.py in the Prometheus text format.
- ``/healthz`` (liveness): 200 while the worker's lease loop has completed a pass within
  ``LIVENESS_TIMEOUT_SECONDS``, else 503. The JSON body also carries the rules file's
  state (``rules.ok`` is false while a changed file is broken and the old rules stay). A pass finishes even when AWS calls fail, so an
  AWS outage alone does not fail it; a stuck loop does.
- ``/readyz`` (readiness): 200 once the worker has read the lease table and until it
  begins to stop, else 503.

The server runs on its own daemon thread and never calls AWS. It listens on the port of
``ANOMALY_PROCESSOR_METRICS_PORT`` (default 8080, the port the chart names ``metrics``)
and on every interface unless ``ANOMALY_PROCESSOR_METRICS_ADDRESS`` names one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from anomaly_processor.reload import rules_health

log = logging.getLogger(__name__)

ENV_METRICS_ADDRESS: Final = "ANOMALY_PROCESSOR_METRICS_ADDRESS"
# Kubelet and Prometheus reach the pod on its pod IP, so the default is every interface.
DEFAULT_ADDRESS: Final = "0.0.0.0"  # noqa: S104
# A lease-loop pass makes a few AWS calls. With botocore's connect and read timeouts and
# retries, a pass against an unreachable endpoint can take tens of seconds.
LIVENESS_TIMEOUT_SECONDS: Final = 120.0


class WorkerState(Protocol):
    """The worker state that the probes read."""

    ready: threading.Event
    last_pass_at: float | None

    @property
    def stopping(self) -> bool: ...


def metrics_address(environ: Mapping[str, str] = os.environ) -> str:
    """Return the address to listen on: ``ANOMALY_PROCESSOR_METRICS_ADDRESS`` or every interface."""
    return environ.get(ENV_METRICS_ADDRESS) or DEFAULT_ADDRESS


class HealthServer:
    """Serves the three paths for one worker until ``stop``."""

    def __init__(
        self,
        worker: WorkerState,
        address: str,
        port: int,
        liveness_timeout: float = LIVENESS_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._worker = worker
        self._liveness_timeout = liveness_timeout
        self._clock = clock
        self._started_at = clock()
        self._server = ThreadingHTTPServer((address, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def live(self) -> bool:
        """Tell whether the lease loop completed a pass recently (or started recently)."""
        last = self._worker.last_pass_at
        since = self._started_at if last is None else last
        return self._clock() - since < self._liveness_timeout

    def ready(self) -> bool:
        return self._worker.ready.is_set() and not self._worker.stopping

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send_liveness(server.live())
                elif path == "/readyz":
                    self._send_check(server.ready(), "lease table not read yet, or stopping")
                else:
                    self._send(404, b"not found: expected /metrics, /healthz or /readyz\n", "text/plain")

            def _send_liveness(self, passed: bool) -> None:
                # A broken rules file shows in the detail but does not fail liveness: the
                # processor keeps judging with the rules in force, and a restart would not help.
                detail = {"status": "ok" if passed else "lease loop stalled", "rules": rules_health()}
                body = (json.dumps(detail, default=str) + "\n").encode()
                self._send(200 if passed else 503, body, "application/json")

            def _send_check(self, passed: bool, failure: str) -> None:
                if passed:
                    self._send(200, b"ok\n", "text/plain")
                else:
                    self._send(503, f"{failure}\n".encode(), "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # Probes arrive every few seconds; logging each would bury the processor's lines.
                pass

        return Handler
