"""Asks a server's grpc.health.v1 whether it is SERVING; exits 0 if so (for container health checks).

    python -m imgsim.healthcheck HOST:PORT [--service imgsim.v1.Index] [--timeout 3] [--tls-ca CA.pem]

A service started with TLS is asked over TLS: give --tls-ca (or IMGSIM_HEALTHCHECK_TLS_CA), and, when it
requires client certificates, --tls-cert/--tls-key (IMGSIM_HEALTHCHECK_TLS_CERT/_KEY). `grpcs://HOST:PORT`
also turns TLS on (with the system's roots when no CA is given). Health needs no bearer token: the services
leave it open.
"""

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel_to(address: str, tls_ca: str | None = None, tls_cert: str | None = None,
               tls_key: str | None = None) -> grpc.Channel:
    secure = address.startswith("grpcs://") or bool(tls_ca)
    target = address.split("://", 1)[-1]
    if not secure:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(*(Path(path).read_bytes() if path else None
                                                 for path in (tls_ca, tls_key, tls_cert)))
    return grpc.secure_channel(target, credentials)


def is_serving(address: str, service: str = "", timeout: float = 3.0, tls_ca: str | None = None,
               tls_cert: str | None = None, tls_key: str | None = None) -> bool:
    with channel_to(address, tls_ca, tls_cert, tls_key) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m imgsim.healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", help="host:port (or grpcs://host:port) of the server")
    parser.add_argument("--service", default="", help="service name; empty for the server as a whole")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    for name in ("ca", "cert", "key"):
        variable = f"IMGSIM_HEALTHCHECK_TLS_{name.upper()}"
        parser.add_argument(f"--tls-{name}", default=os.environ.get(variable) or None,
                            help=f"PEM file for TLS [env {variable}]")
    args = parser.parse_args()
    try:
        serving = is_serving(args.address, args.service, args.timeout, args.tls_ca, args.tls_cert, args.tls_key)
    except OSError as err:
        print(f"cannot read a TLS file: {err}", file=sys.stderr)
        sys.exit(2)
    print("SERVING" if serving else "NOT SERVING")
    sys.exit(0 if serving else 1)


if __name__ == "__main__":
    main()
