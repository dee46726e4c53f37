"""The processor's SIGTERM and SIGINT handler, called while a test thread holds the locks a signal may find held.

A real signal lands between two bytecodes of the main thread, which makes the interesting
moments (the main thread inside ``Event.wait()``) rare. These tests recreate those moments
by holding the same locks in a thread and calling the installed handler there.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

import pytest
from anomaly_pipeline.spec import Pipeline, processor_config
from anomaly_processor.__main__ import install_stop_handler, make_clients
from anomaly_processor.worker import Worker

# Bounds every wait, so that a handler that deadlocks fails its test instead of hanging the suite.
TIMEOUT_SECONDS: Final = 5.0
STOP_MESSAGE: Final = "stop requested; finishing the batches in flight, then releasing the leases"


@pytest.fixture
def worker(example_pipeline: Pipeline) -> Worker:
    config = processor_config(example_pipeline, "w1")
    # The worker never runs, so its clients send no request to this closed local port.
    kinesis, dynamodb = make_clients(config, endpoint_url="http://127.0.0.1:9")
    return Worker(config, kinesis, dynamodb)


@pytest.fixture
def restored_signal_handlers() -> Iterator[None]:
    """Put pytest's own SIGTERM and SIGINT handlers back after the test installs the processor's."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def stop_request_signals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the signal names of the captured stop requests, in order."""
    return [getattr(record, "signal", "") for record in caplog.records if record.getMessage() == STOP_MESSAGE]


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.usefixtures("restored_signal_handlers")
def test_stop_signal_during_event_wait_does_not_deadlock(worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anomaly_processor")
    handler = install_stop_handler(worker)
    assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGINT) is handler
    handler_returned = threading.Event()

    def signal_inside_event_wait() -> None:
        # Event.wait() holds this non-reentrant lock on entry and again after waking, before it returns.
        # A signal in either window runs the handler in the main thread, which then holds the lock.
        with worker._stop._cond:  # type: ignore[attr-defined]
            handler(signal.SIGTERM, None)
            handler_returned.set()

    # The caller is a daemon because, if the handler deadlocks, it holds the lock forever and must not block exit.
    caller = threading.Thread(target=signal_inside_event_wait, name="signal-inside-event-wait", daemon=True)
    caller.start()
    caller.join(TIMEOUT_SECONDS)

    assert handler_returned.is_set(), (
        f"the handler did not return within {TIMEOUT_SECONDS} s while Event.wait() held its lock"
    )
    assert not caller.is_alive()
    assert wait_until(lambda: worker.stopping), "the worker was not asked to stop once the lock was released"
    assert stop_request_signals(caplog) == ["SIGTERM"]


@pytest.mark.usefixtures("restored_signal_handlers")
def test_second_stop_signal_is_harmless(worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anomaly_processor")
    handler = install_stop_handler(worker)

    handler(signal.SIGTERM, None)
    handler(signal.SIGINT, None)

    assert wait_until(lambda: len(stop_request_signals(caplog)) == 2), (
        f"stop requests logged: {stop_request_signals(caplog)}"
    )
    assert sorted(stop_request_signals(caplog)) == ["SIGINT", "SIGTERM"]
    assert worker.stopping
