"""A shadow detector named in the spec, through the worker on moto's server: counted, never forwarded."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.demo import read_whole_stream
from anomaly_pipeline.provisioning import provision
from anomaly_pipeline.spec import Pipeline, processor_config
from anomaly_processor.detector import parse_detector
from anomaly_processor.worker import Worker
from botocore.config import Config
from prometheus_client import REGISTRY

pytestmark = pytest.mark.e2e


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_spec_shadow_counted_not_forwarded(moto_endpoint: str, example_pipeline: Pipeline) -> None:
    aws = Aws("eu-west-1", endpoint_url=moto_endpoint)
    shadow = parse_detector(
        {"name": "pipeline-trial", "rules": {"conditions": [{"field": "transaction_amount", "op": "gt", "value": 50}]}},
        "spec.detectors.shadow",
    )
    pipeline = dataclasses.replace(
        example_pipeline,
        input=dataclasses.replace(example_pipeline.input, shard_count=1),
        shadow_detector=shadow,
    )
    provision(aws, pipeline)
    kinesis = aws.client("kinesis")
    amounts = ["150", "75", "20", "60", "101", "99"]
    payloads = [f'{{"event_id": "{i}", "transaction_amount": {a}}}'.encode() for i, a in enumerate(amounts)]
    records = [{"Data": data, "PartitionKey": f"k{i}"} for i, data in enumerate(payloads)]
    assert kinesis.put_records(StreamName=pipeline.input.name, Records=records)["FailedRecordCount"] == 0
    labels = {"stream": pipeline.input.name, "detector": "pipeline-trial"}
    name = "anomaly_processor_shadow_verdicts_total"
    before = {
        (result, verdict): sample(name, **labels, result=result, shadow_verdict=verdict)
        for result in ("agreement", "disagreement")
        for verdict in ("anomalous", "normal")
    }

    fast_fail = Config(retries={"max_attempts": 1})
    worker = Worker(
        processor_config(pipeline, "shadow-test"),
        aws.client("kinesis", fast_fail),
        aws.client("dynamodb", fast_fail),
        discovery_interval=0.5,
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(read_whole_stream(kinesis, pipeline.output.name)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # past the last batch, so a stray forward would show up
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()

    forwarded = sorted(r["Data"] for r in read_whole_stream(kinesis, pipeline.output.name))
    assert forwarded == sorted([payloads[0], payloads[4]]), "only the rules' verdicts are forwarded"

    def counted(result: str, verdict: str) -> float:
        return sample(name, **labels, result=result, shadow_verdict=verdict) - before[(result, verdict)]

    assert counted("agreement", "anomalous") == 2  # 150, 101
    assert counted("agreement", "normal") == 1  # 20
    assert counted("disagreement", "anomalous") == 3  # 75, 60, 99
    assert counted("disagreement", "normal") == 0
