"""The dead-letter stream through spec, provisioning, IAM documents and the processor on moto's server."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from anomaly_operator import crd
from anomaly_pipeline import policies, spec
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.demo import read_whole_stream
from anomaly_pipeline.provisioning import OWNER_TAG, deprovision, provision
from anomaly_pipeline.spec import Pipeline, SpecError, load_pipeline_file, parse_pipeline, processor_config
from anomaly_processor.config import from_document
from anomaly_processor.deadletter import MAX_RECORD_BYTES, format_arrival
from aws_kinesis_agg.aggregator import RecordAggregator

from tests.worker_harness import running_worker, wait_for

# The malformed inputs of the processor's end-to-end tests, with the reason each must carry.
MALFORMED_CASES: list[tuple[bytes, str]] = [
    (b'{ref: "X"}', "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"[]", "not_an_object"),
    (b'"txt"', "not_an_object"),
    (b'{"event_id":"b"}', "missing_field"),
    (b'{"transaction_amount":null}', "missing_field"),
    (b'{"transaction_amount":"150"}', "not_a_number"),
    (b'{"transaction_amount":true}', "not_a_number"),
]
VALID_ANOMALY = b'{"event_id":"a","transaction_amount":150}'
VALID_NORMAL = b'{"event_id":"n","transaction_amount":5}'


def document(**spec_fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": spec.API_VERSION,
        "kind": spec.KIND,
        "metadata": {"name": "payments", "namespace": "default"},
        "spec": {"tester": {"principals": ["123456789012"]}, **spec_fields},
    }


def schema_accepts(pipeline_document: dict[str, Any]) -> bool:
    return not list(jsonschema.Draft7Validator(crd.validation_schema()).iter_errors(pipeline_document))


# Spec


def test_no_dead_letter_stream_by_default() -> None:
    pipeline = parse_pipeline(document())
    assert pipeline.dead_letter is None
    assert processor_config(pipeline).dead_letter_stream is None


def test_dead_letter_stream_name_derived() -> None:
    pipeline = parse_pipeline(document(deadLetter={"streamNamePrefix": "dead-", "shardCount": 2}))
    assert pipeline.dead_letter == spec.StreamSpec("dead-default-payments", 2)
    config = processor_config(pipeline)
    assert config.dead_letter_stream == "dead-default-payments"
    assert from_document(config.as_document()).dead_letter_stream == "dead-default-payments"


@pytest.mark.parametrize(
    ("dead_letter", "accepted"),
    [
        ({}, True),
        ({"streamNamePrefix": None}, True),
        ({"streamNamePrefix": "dead-"}, True),
        ({"streamNamePrefix": "d" * spec.PREFIX_MAX, "shardCount": spec.MAX_SHARDS}, True),
        ({"streamNamePrefix": "d" * (spec.PREFIX_MAX + 1)}, False),
        ({"streamNamePrefix": "dead letters"}, False),
        ({"streamNamePrefix": ""}, False),
        ({"streamNamePrefix": "dead-", "shardCount": 0}, False),
        ({"shardCount": spec.MAX_SHARDS + 1}, False),
        ({"streamNamePrefix": "dead-", "retentionHours": 48}, False),
    ],
)
def test_dead_letter_schema_and_parser_agree(dead_letter: dict[str, Any], accepted: bool) -> None:
    pipeline_document = document(deadLetter=dead_letter)
    assert schema_accepts(pipeline_document) is accepted
    if accepted:
        parse_pipeline(pipeline_document)
    else:
        with pytest.raises(SpecError, match=r"spec\.deadLetter"):
            parse_pipeline(pipeline_document)


@pytest.mark.parametrize("prefix", ["ingest-", "anomaly-"])
def test_dead_letter_must_differ_from_other_streams(prefix: str) -> None:
    with pytest.raises(SpecError, match=r"spec\.deadLetter\.streamNamePrefix.*must differ"):
        parse_pipeline(document(deadLetter={"streamNamePrefix": prefix}))


# IAM documents

INPUT = "arn:aws:kinesis:eu-west-1:123456789012:stream/ingest-default-payments"
OUTPUT = "arn:aws:kinesis:eu-west-1:123456789012:stream/anomaly-default-payments"
DEAD = "arn:aws:kinesis:eu-west-1:123456789012:stream/dead-default-payments"
TABLE = "arn:aws:dynamodb:eu-west-1:123456789012:table/anomaly-checkpoints-default-payments"


def grants(policy: dict[str, Any], resource: str) -> set[str]:
    actions: set[str] = set()
    for statement in policy["Statement"]:
        if statement["Resource"] == resource:
            actions.update(statement["Action"])
    return actions


def test_processor_may_write_dead_letters() -> None:
    policy = policies.processor_policy(INPUT, OUTPUT, TABLE, DEAD)
    assert grants(policy, DEAD) == {"kinesis:PutRecords"}
    assert grants(policy, INPUT) == grants(policies.processor_policy(INPUT, OUTPUT, TABLE), INPUT)
    assert grants(policies.processor_policy(INPUT, OUTPUT, TABLE), DEAD) == set()


def test_tester_may_not_touch_dead_letters() -> None:
    assert "dead-default-payments" not in json.dumps(policies.tester_policy(INPUT, OUTPUT))


# Provisioning and the processor on moto's server


@pytest.fixture
def aws(moto_endpoint: str) -> Aws:
    return Aws("eu-west-1", endpoint_url=moto_endpoint)


@pytest.fixture
def pipeline(aws: Aws, example_pipeline: Pipeline) -> Pipeline:
    with_dead_letters = dataclasses.replace(
        example_pipeline,
        input=dataclasses.replace(example_pipeline.input, shard_count=2),
        dead_letter=spec.StreamSpec("dead-default-payments", 1),
    )
    provision(aws, with_dead_letters)
    return with_dead_letters


@pytest.mark.e2e
def test_provisioning_creates_and_grants_dead_letter_stream(aws: Aws, pipeline: Pipeline) -> None:
    kinesis = aws.client("kinesis")
    summary = kinesis.describe_stream_summary(StreamName="dead-default-payments")["StreamDescriptionSummary"]
    tags = {t["Key"]: t["Value"] for t in kinesis.list_tags_for_stream(StreamName="dead-default-payments")["Tags"]}
    assert tags[OWNER_TAG] == "default/payments"
    iam = aws.client("iam")
    processor = iam.get_role_policy(RoleName=pipeline.processor_role_name, PolicyName="anomaly-processor")
    tester = iam.get_role_policy(RoleName=pipeline.tester_role_name, PolicyName="anomaly-tester")
    assert grants(processor["PolicyDocument"], summary["StreamARN"]) == {"kinesis:PutRecords"}
    assert summary["StreamARN"] not in json.dumps(tester["PolicyDocument"])
    assert provision(aws, pipeline).changes == [], "a second run changes nothing"


@pytest.mark.e2e
def test_delete_policy_removes_dead_letter_stream(aws: Aws, pipeline: Pipeline) -> None:
    changes = deprovision(aws, dataclasses.replace(pipeline, deletion_policy="Delete"))
    assert "deleted stream dead-default-payments" in changes
    names = aws.client("kinesis").list_streams()["StreamNames"]
    assert "dead-default-payments" not in names


def aggregate(*user_records: tuple[str, bytes]) -> bytes:
    aggregator = RecordAggregator()
    for key, data in user_records:
        assert aggregator.add_user_record(key, data) is None
    packed = aggregator.clear_and_get()
    assert packed is not None
    return bytes(packed.get_contents()[2])


def input_records(kinesis: Any, stream: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Map (shard id, sequence number) to each input record as GetRecords returns it."""
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for record in kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"]:
            records[(shard["ShardId"], record["SequenceNumber"])] = record
    return records


def dead_letters(aws: Aws) -> list[dict[str, Any]]:
    return [json.loads(r["Data"]) for r in read_whole_stream(aws.client("kinesis"), "dead-default-payments")]


@pytest.mark.e2e
def test_every_malformed_case_dead_lettered(aws: Aws, pipeline: Pipeline) -> None:
    kinesis = aws.client("kinesis")
    entries = [{"Data": data, "PartitionKey": f"key-{i}"} for i, (data, _) in enumerate(MALFORMED_CASES)]
    entries.append({"Data": VALID_ANOMALY, "PartitionKey": "key-valid"})
    corrupt = bytearray(aggregate(("card-1", VALID_ANOMALY)))
    corrupt[-1] ^= 0xFF
    entries.append({"Data": bytes(corrupt), "PartitionKey": "key-corrupt"})
    mixed = aggregate(("card-2", VALID_NORMAL), ("card-3", b'{"transaction_amount":"9"}'))
    entries.append({"Data": mixed, "PartitionKey": "key-mixed"})
    assert kinesis.put_records(StreamName=pipeline.input.name, Records=entries)["FailedRecordCount"] == 0
    inputs = input_records(kinesis, pipeline.input.name)
    by_key = {record["PartitionKey"]: (position, record) for position, record in inputs.items()}

    with running_worker(aws, pipeline, "dead-letter-test"):
        wait_for(lambda: len(dead_letters(aws)) >= len(MALFORMED_CASES) + 2, "every dead letter")
        time.sleep(1.0)  # past the last batch, so a stray write would show up

    letters = dead_letters(aws)
    assert len(letters) == len(MALFORMED_CASES) + 2
    by_partition_key = {letter["partitionKey"]: letter for letter in letters}
    expected: list[tuple[str, bytes, str, int | None]] = [
        (f"key-{i}", data, reason, None) for i, (data, reason) in enumerate(MALFORMED_CASES)
    ]
    expected.append(("key-corrupt", bytes(corrupt), "corrupt_aggregate", None))
    expected.append(("card-3", b'{"transaction_amount":"9"}', "not_a_number", 1))
    for partition_key, data, reason, sub_sequence_number in expected:
        letter = by_partition_key[partition_key]
        outer_key = "key-mixed" if partition_key == "card-3" else partition_key
        (shard_id, sequence_number), record = by_key[outer_key]
        assert letter["version"] == 1
        assert letter["reason"] == reason, partition_key
        assert letter["sourceStream"] == pipeline.input.name
        assert letter["shardId"] == shard_id
        assert letter["sequenceNumber"] == sequence_number
        assert letter["subSequenceNumber"] == sub_sequence_number
        assert letter["arrivalTime"] == format_arrival(record["ApproximateArrivalTimestamp"])
        assert base64.b64decode(letter["data"]) == data
        assert letter["dataLength"] == len(data)
        assert letter["dataSha256"] == hashlib.sha256(data).hexdigest()
        assert letter["dataTruncated"] is False
    assert by_partition_key["key-corrupt"]["detail"] == "MD5 digest of the aggregate does not match its body"

    forwarded = [r["Data"] for r in read_whole_stream(kinesis, pipeline.output.name)]
    assert forwarded == [VALID_ANOMALY], "dead letters never reach the anomaly stream"


@pytest.mark.e2e
def test_record_near_1_mib_dead_lettered_cut(aws: Aws, pipeline: Pipeline) -> None:
    kinesis = aws.client("kinesis")
    data = b"<" + b"x" * (MAX_RECORD_BYTES - len("big") - 1)
    kinesis.put_record(StreamName=pipeline.input.name, Data=data, PartitionKey="big")

    with running_worker(aws, pipeline, "dead-letter-test"):
        wait_for(lambda: len(dead_letters(aws)) >= 1, "the dead letter")

    records = read_whole_stream(kinesis, "dead-default-payments")
    assert len(records) == 1
    assert len(records[0]["Data"]) + len(records[0]["PartitionKey"].encode()) <= MAX_RECORD_BYTES
    letter = json.loads(records[0]["Data"])
    assert letter["reason"] == "not_json"
    assert letter["dataTruncated"] is True
    assert letter["dataLength"] == len(data)
    assert letter["dataSha256"] == hashlib.sha256(data).hexdigest()
    assert data.startswith(base64.b64decode(letter["data"]))


def test_example_pipeline_full_uses_all_three() -> None:
    full = load_pipeline_file(str(Path(__file__).resolve().parents[2] / "examples" / "pipeline-full.yaml"))
    assert full.dead_letter == spec.StreamSpec("anomaly-dead-letter-default-payments-full", 1)
    assert full.shadow_detector is not None
    assert full.shadow_detector.name == "stricter-rules"
    assert any("." in condition.field for condition in full.rules.conditions)
    settings = processor_config(full).as_document()
    assert settings["deadLetterStream"] == "anomaly-dead-letter-default-payments-full"
    assert settings["detectors"]["shadow"]["name"] == "stricter-rules"
