"""The worker: finds the input stream's shards and runs one consumer thread per shard.

It lists shards every few seconds, so shards made by a split, a merge or
UpdateShardCount are found without a restart. A child shard starts only after each of
its parents has been read to its end (its checkpoint is ``SHARD_END``) or has left the
stream's retention, so a partition key's records are read in order across a reshard.

``stop`` asks every consumer to finish its batch and checkpoint; ``run`` returns when
all have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from anomaly_processor.checkpoint import CheckpointStore, checkpoint_of
from anomaly_processor.config import ProcessorConfig
from anomaly_processor.consumer import ShardConsumer, ShardProgress
from anomaly_processor.detector import Detector, RuleDetector
from anomaly_processor.events import EventDecoder
from anomaly_processor.forwarder import Forwarder
from anomaly_processor.reader import ShardReader

log = logging.getLogger(__name__)

DISCOVERY_INTERVAL_SECONDS: Final = 5.0
RESTART_DELAY_SECONDS: Final = 2.0


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    parent_ids: tuple[str, ...]
    closed: bool


def list_shards(kinesis: Any, stream: str) -> list[Shard]:
    """Return every shard of the stream, open and closed, paging through ListShards."""
    shards: list[Shard] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = kinesis.list_shards(**kwargs)
        for raw in page["Shards"]:
            parents = tuple(p for p in (raw.get("ParentShardId"), raw.get("AdjacentParentShardId")) if p)
            closed = "EndingSequenceNumber" in raw["SequenceNumberRange"]
            shards.append(Shard(raw["ShardId"], parents, closed))
        token = page.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}


class Worker:
    """Runs the consumers of one processor process."""

    def __init__(
        self,
        config: ProcessorConfig,
        kinesis: Any,
        dynamodb: Any,
        detector: Callable[[], Detector] | None = None,
        discovery_interval: float = DISCOVERY_INTERVAL_SECONDS,
    ) -> None:
        self.config = config
        self._kinesis = kinesis
        self._checkpoints = CheckpointStore(dynamodb, config.checkpoint_table)
        self._decoder = EventDecoder(config.required_numeric_fields)
        rule_detector = RuleDetector(config.rules)
        self._detector = detector or (lambda: rule_detector)
        self._discovery_interval = discovery_interval
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._failed_at: dict[str, float] = {}
        self.finished: dict[str, ShardProgress] = {}
        self.ready = threading.Event()

    def stop(self) -> None:
        """Ask every consumer to finish its batch, checkpoint and stop."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Consume until ``stop`` is called; return once every consumer has stopped."""
        log.info(
            "worker started",
            extra={"stream": self.config.input_stream, "anomaly_stream": self.config.output_stream},
        )
        while not self._stop.is_set():
            try:
                self._start_ready_shards()
                self.ready.set()
            except (ClientError, BotoCoreError) as error:
                log.warning(
                    "listing shards failed; retrying",
                    extra={"stream": self.config.input_stream, "error": str(error)},
                )
            self._stop.wait(self._discovery_interval)
        for thread in list(self._threads.values()):
            thread.join()
        log.info("worker stopped", extra={"stream": self.config.input_stream})

    def _start_ready_shards(self) -> None:
        self._threads = {shard_id: t for shard_id, t in self._threads.items() if t.is_alive()}
        shards = list_shards(self._kinesis, self.config.input_stream)
        items = self._checkpoints.read_all()
        listed = {s.shard_id for s in shards}
        ended = {shard_id for shard_id, item in items.items() if (c := checkpoint_of(item)) and c.is_shard_end}
        now = time.monotonic()
        for shard in shards:
            if shard.shard_id in self._threads or shard.shard_id in ended:
                continue
            if now - self._failed_at.get(shard.shard_id, float("-inf")) < RESTART_DELAY_SECONDS:
                continue
            if any(parent in listed and parent not in ended for parent in shard.parent_ids):
                continue
            known_parent = any(parent in listed or parent in items for parent in shard.parent_ids)
            self._start(shard, checkpoint_of(items.get(shard.shard_id)), known_parent)

    def _start(self, shard: Shard, checkpoint: Any, known_parent: bool) -> None:
        config = self.config
        # A child's records follow its parents', so it is read from its start whatever the configured position.
        position = "TRIM_HORIZON" if known_parent else config.starting_position
        reader = ShardReader(
            self._kinesis,
            config.input_stream,
            shard.shard_id,
            checkpoint.sequence_number if checkpoint else None,
            position,
            config.poll_interval_millis / 1000,
        )
        consumer = ShardConsumer(
            shard_id=shard.shard_id,
            stream=config.input_stream,
            reader=reader,
            forwarder=Forwarder(self._kinesis, config.output_stream, shard.shard_id),
            checkpoints=self._checkpoints,
            decoder=self._decoder,
            detector=self._detector,
            stop=self._stop,
            start_checkpoint=checkpoint,
        )
        thread = threading.Thread(target=self._run_consumer, args=(consumer,), name=f"shard-{shard.shard_id}")
        self._threads[shard.shard_id] = thread
        thread.start()

    def _run_consumer(self, consumer: ShardConsumer) -> None:
        try:
            progress = consumer.run()
        except Exception:
            # A consumer that fails is restarted from its checkpoint at the next discovery.
            log.exception(
                "shard consumer failed; it restarts from its checkpoint",
                extra={"stream": self.config.input_stream, "shard": consumer.shard_id},
            )
            self._failed_at[consumer.shard_id] = time.monotonic()
            return
        self.finished[consumer.shard_id] = progress
