"""One processor worker in a thread against moto's server, for end-to-end tests of one worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from anomaly_pipeline.aws import Aws
from anomaly_pipeline.spec import Pipeline, processor_config
from anomaly_processor.worker import Worker
from botocore.config import Config

# moto returns HTTP 500 for a malformed request, so a test fails faster without retries.
FAST_FAIL = Config(retries={"max_attempts": 1})


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` every 100 ms; fail naming ``what`` when it stays false for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def running_worker(aws: Aws, pipeline: Pipeline, worker_id: str = "test", kinesis: Any = None) -> Iterator[Worker]:
    """Run a worker in a thread until the block ends, then stop it and check that it stopped.

    ``kinesis`` lets a test pass a client with its own event hooks.
    """
    worker = Worker(
        processor_config(pipeline, worker_id),
        kinesis or aws.client("kinesis", FAST_FAIL),
        aws.client("dynamodb", FAST_FAIL),
        discovery_interval=0.5,
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert worker.ready.wait(10), "the worker never read the lease table"
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"
