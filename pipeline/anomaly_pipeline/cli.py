"""The ``anomaly-pipeline`` command line: apply, delete, credentials, process, emulator, demo.

Every command except ``emulator`` and ``demo`` talks to the endpoint given by
``--endpoint-url``, else to botocore's ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``
variables, else to real AWS. Exit status: 0 success, 1 failure, 2 invalid input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from anomaly_processor.config import ConfigError
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from anomaly_pipeline import emulator
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.credentials import export_lines, tester_credentials
from anomaly_pipeline.provisioning import ProvisioningError, deprovision, provision
from anomaly_pipeline.spec import PipelineFileError, SpecError, load_pipeline_file, processor_config

EXAMPLE_PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.yaml"


def _aws(args: argparse.Namespace, region: str) -> Aws:
    return Aws(region=region, endpoint_url=args.endpoint_url)


def command_apply(args: argparse.Namespace) -> int:
    pipeline = load_pipeline_file(args.file)
    result = provision(_aws(args, pipeline.region), pipeline)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    for change in result.changes or ["no changes: every resource already matches the spec"]:
        print(change)
    print(f"input stream:   {result.input.name}")
    print(f"anomaly stream: {result.output.name}")
    print(f"tester role:    {result.tester_role_arn}")
    return 0


def command_delete(args: argparse.Namespace) -> int:
    pipeline = load_pipeline_file(args.file)
    changes = deprovision(_aws(args, pipeline.region), pipeline)
    for change in changes or ["nothing to delete"]:
        print(change)
    if pipeline.deletion_policy == "Retain":
        print(
            f"kept streams {pipeline.input.name}, {pipeline.output.name} and table {pipeline.checkpoint_table} (deletionPolicy: Retain)"
        )
    return 0


def command_credentials(args: argparse.Namespace) -> int:
    if args.from_cluster:
        from anomaly_pipeline.cluster import read_pipeline_from_cluster

        pipeline, role_arn = read_pipeline_from_cluster(args.from_cluster, args.namespace)
    else:
        if not args.file:
            raise PipelineFileError(
                "-f", "missing: give a pipeline file with -f or a cluster resource with --from-cluster"
            )
        pipeline, role_arn = load_pipeline_file(args.file), None
    aws = _aws(args, pipeline.region)
    result = tester_credentials(aws, pipeline, role_arn)
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(export_lines(result, pipeline.region, aws.endpoint_for("sts"))))
    return 0


def command_process(args: argparse.Namespace) -> int:
    from anomaly_processor import __main__ as processor_main
    from anomaly_processor import logs
    from anomaly_processor.config import environment_settings
    from anomaly_processor.health import ENV_METRICS_ADDRESS

    pipeline = load_pipeline_file(args.file)
    config = dataclasses.replace(processor_config(pipeline), **environment_settings())
    # On a workstation the metrics port is for the user alone; pods set no address and listen on all.
    os.environ.setdefault(ENV_METRICS_ADDRESS, "127.0.0.1")
    logs.configure(args.log_level, pipeline=config.pipeline, worker=config.worker_id)
    return processor_main.run(config, endpoint_url=args.endpoint_url)


def command_emulator(args: argparse.Namespace) -> int:
    with emulator.running_emulator(args.port) as endpoint_url:
        print("# AWS endpoint running on 127.0.0.1; use it from another shell with:")
        print("\n".join(emulator.environment_lines(endpoint_url, args.region)), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("# emulator stopped", file=sys.stderr)
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from anomaly_pipeline.demo import run_demo

    pipeline = load_pipeline_file(args.file)
    if args.shards is not None:
        pipeline = dataclasses.replace(pipeline, input=dataclasses.replace(pipeline.input, shard_count=args.shards))
    for name, value in emulator.CREDENTIALS.items():
        os.environ[name] = value
    say: Callable[[str], None] = (lambda line: print(line, file=sys.stderr)) if args.json else print
    with emulator.running_emulator() as endpoint_url:
        say(f"embedded AWS endpoint: {endpoint_url}")
        aws = Aws(region=pipeline.region, endpoint_url=endpoint_url)
        summary, _ = run_demo(
            aws, pipeline, args.events, args.rate, show_progress=not args.no_progress and sys.stderr.isatty(), log=say
        )
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(summary.table())
        print("PASS" if summary.passed else "FAIL: anomalies missing or unexpected, or latency at or above 2000 ms")
    return 0 if summary.passed else 1


def _bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], int | float]:
    """Return an argparse type that accepts a number from ``low`` to ``high``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {low:g} to {high:g}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-pipeline", description="Anomaly pipeline on Amazon Kinesis.")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_endpoint(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--endpoint-url", help="AWS endpoint for every service (default: AWS_ENDPOINT_URL*, else AWS)")
        return sub

    def with_file(sub: argparse.ArgumentParser, required: bool = True) -> argparse.ArgumentParser:
        sub.add_argument("-f", "--file", required=required, help="AnomalyPipeline YAML file")
        return sub

    apply = with_file(with_endpoint(commands.add_parser("apply", help="create or update the pipeline's AWS resources")))
    apply.add_argument("--json", action="store_true", help="print the resources as one JSON object")
    apply.set_defaults(handler=command_apply)

    delete = with_file(
        with_endpoint(
            commands.add_parser("delete", help="delete the roles; streams and table too under deletionPolicy: Delete")
        )
    )
    delete.set_defaults(handler=command_delete)

    credentials = with_file(
        with_endpoint(commands.add_parser("credentials", help="assume the tester role and print its credentials")),
        required=False,
    )
    credentials.add_argument(
        "--from-cluster", metavar="NAME", help="read the tester role from this AnomalyPipeline's status"
    )
    credentials.add_argument(
        "-n", "--namespace", default="default", help="namespace of --from-cluster (default: default)"
    )
    credentials.add_argument(
        "--json", action="store_true", help="print aws sts assume-role output plus streams and region"
    )
    credentials.set_defaults(handler=command_credentials)

    process = with_file(with_endpoint(commands.add_parser("process", help="run the processor until SIGINT or SIGTERM")))
    process.add_argument("--log-level", default="INFO", help="log level (default: INFO)")
    process.set_defaults(handler=command_process)

    run_emulator = commands.add_parser("emulator", help="run an AWS endpoint (moto) on 127.0.0.1 in the foreground")
    run_emulator.add_argument(
        "--port",
        type=_bounded(int, 1, 65535),
        default=emulator.DEFAULT_PORT,
        help=f"port (default: {emulator.DEFAULT_PORT})",
    )
    run_emulator.add_argument(
        "--region", default="eu-west-1", help="region for the printed AWS_REGION (default: eu-west-1)"
    )
    run_emulator.set_defaults(handler=command_emulator)

    demo = commands.add_parser("demo", help="run the whole pipeline on an embedded endpoint and check the anomalies")
    demo.add_argument(
        "-f", "--file", default=str(EXAMPLE_PIPELINE), help="pipeline file (default: examples/pipeline.yaml)"
    )
    demo.add_argument(
        "--events", type=_bounded(int, 1, 10_000_000), default=5000, help="events to write (default: 5000)"
    )
    demo.add_argument(
        "--rate", type=_bounded(float, 1, 100_000), default=500.0, help="events per second (default: 500)"
    )
    demo.add_argument("--shards", type=_bounded(int, 1, 500), default=2, help="input stream shards (default: 2)")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    demo.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bars (hidden anyway when stderr is not a terminal)",
    )
    demo.set_defaults(handler=command_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (SpecError, ConfigError) as error:
        print(f"anomaly-pipeline: invalid pipeline: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"anomaly-pipeline: {error}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(
            "anomaly-pipeline: no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID, "
            "or run `anomaly-pipeline emulator` and export the lines it prints",
            file=sys.stderr,
        )
        return 1
    except ProvisioningError as error:
        print(f"anomaly-pipeline: {error}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as error:
        print(f"anomaly-pipeline: AWS call failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
