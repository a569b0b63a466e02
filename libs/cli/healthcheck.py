"""`python -m llmserve.cli.healthcheck [HOST]:PORT [--service NAME]`: exit 0 iff SERVING.

For container healthchecks (compose, Docker): asks the service's standard grpc.health.v1
endpoint, so "healthy" means what the service says, not merely that a port is open. A
draining service answers NOT_SERVING and turns unhealthy at once. Imports nothing but grpc,
since it runs every few seconds in every container.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 2.0) -> str:
    """The serving status name, or the gRPC error code name when the call fails."""
    if address.startswith(":"):
        address = "127.0.0.1" + address
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError as e:
        return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmserve.cli.healthcheck", description=__doc__)
    parser.add_argument("address", help="host:port, or :port for 127.0.0.1")
    parser.add_argument("--service", default="", help="service name; empty: the whole server")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    status = check(args.address, args.service, args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
