"""Asks a server's grpc.health.v1 whether it is SERVING; exits 0 if so (for container health checks).

    python -m imgsim.healthcheck HOST:PORT [--service imgsim.v1.Index] [--timeout 3]
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def is_serving(address: str, service: str = "", timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m imgsim.healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", help="host:port of the server")
    parser.add_argument("--service", default="", help="service name; empty for the server as a whole")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args()
    serving = is_serving(args.address, args.service, args.timeout)
    print("SERVING" if serving else "NOT SERVING")
    sys.exit(0 if serving else 1)


if __name__ == "__main__":
    main()
