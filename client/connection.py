"""How the command line reaches the services: addresses (host:port, grpc://, grpcs://), TLS and tokens from
flags or environment, and a quick check that a service of the right kind answers there."""

import argparse
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.channels import ClientTls, open_channel
from imgsim.options import Options, number

EMBEDDER_ENV = "IMGSIM_EMBEDDER_ADDRESS"
INDEX_ENV = "IMGSIM_INDEX_ADDRESS"
SERVICES = {"embedder": ("imgsim.v1.Embedder", "imgsim-embedder"), "index": ("imgsim.v1.Index", "imgsim-index")}
REACH_TIMEOUT_S = 3.0


class UsageError(Exception):
    """A mistake in how the command was called: one line, exit code 2, no traceback."""


@dataclass(frozen=True)
class Address:
    target: str  # host:port (or several, comma-separated)
    secure: bool  # grpcs:// asks for TLS


def parse_address(text: str, role: str) -> Address:
    """host:port, grpc://host:port or grpcs://host:port; several replicas comma-separated."""
    secure = False
    raw = text.strip()
    for scheme, tls in (("grpcs://", True), ("grpc://", False)):
        if raw.lower().startswith(scheme):
            raw, secure = raw[len(scheme):], tls
            break
    if "://" in raw:
        raise UsageError(f"--{role} {text!r}: give host:port, grpc://host:port or grpcs://host:port")
    parts = [p.strip().rstrip("/") for p in raw.split(",") if p.strip()]
    if not parts:
        raise UsageError(f"--{role} is empty: give host:port")
    for part in parts:
        host, colon, port = part.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--{role} {part!r} has no port: give host:port (e.g. 127.0.0.1:"
                             f"{50051 if role == 'embedder' else 50052})")
    return Address(",".join(parts), secure)


def add_connection_options(parser: argparse.ArgumentParser, roles: tuple[str, ...]) -> None:
    options = Options(parser, "IMGSIM")
    group = options.group("connection")
    if "embedder" in roles:
        group.add("--embedder", None, "embedder address: host:port, grpc:// or grpcs:// (TLS); several replicas "
                  "comma-separated are spread round robin", env=EMBEDDER_ENV)
    if "index" in roles:
        group.add("--index", None, "index address (several comma-separated: shards of one index)", env=INDEX_ENV)
    group.add("--token", None, "bearer token the services require", env="IMGSIM_TOKEN")
    group.add("--token-file", None, "file holding the bearer token", env="IMGSIM_TOKEN_FILE")
    group.add("--tls-ca", None, "PEM CA that signed the services' certificates (turns TLS on)", env="IMGSIM_TLS_CA")
    group.add("--tls-cert", None, "PEM client certificate, for mutual TLS", env="IMGSIM_TLS_CERT")
    group.add("--tls-key", None, "PEM key of --tls-cert", env="IMGSIM_TLS_KEY")
    group.add("--timeout", 60.0, "seconds a call may take", type=number(0.1, 86400), env="IMGSIM_TIMEOUT")


def credentials(args: argparse.Namespace, secure: bool) -> tuple[ClientTls | None, str | None]:
    token = args.token
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as err:
            raise UsageError(f"--token-file {args.token_file}: {err.strerror}") from None
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty")
    files = {name: getattr(args, f"tls_{name}") for name in ("ca", "cert", "key")}
    for name, path in files.items():
        if path and not Path(path).is_file():
            raise UsageError(f"--tls-{name} {path}: no such file")
    if bool(files["cert"]) != bool(files["key"]):
        raise UsageError("mutual TLS needs both --tls-cert and --tls-key")
    if secure and not files["ca"]:
        raise UsageError("grpcs:// needs --tls-ca (the CA that signed the service's certificate)")
    tls = ClientTls(Path(files["ca"]), Path(files["cert"]) if files["cert"] else None,
                    Path(files["key"]) if files["key"] else None) if files["ca"] else None
    return tls, token


def address_of(args: argparse.Namespace, role: str) -> Address:
    value = getattr(args, role, None)
    if not value:
        env = EMBEDDER_ENV if role == "embedder" else INDEX_ENV
        raise UsageError(f"give --{role} host:port (or set {env})")
    return parse_address(value, role)


def check_reachable(address: str, role: str, tls: ClientTls | None, token: str | None) -> None:
    """Fails in about REACH_TIMEOUT_S with a plain sentence when nothing, or the wrong service, answers."""
    service, program = SERVICES[role]
    for one in address.split(","):
        channel = open_channel(one, tls, token)
        try:
            grpc.channel_ready_future(channel).result(timeout=REACH_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            raise UsageError(f"cannot reach the {role} at {one} — is {program} running there"
                             f"{' with TLS' if tls else ''}?") from None
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=REACH_TIMEOUT_S)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                raise UsageError(f"the {role} at {one} is not serving yet (loading or stopping); try again shortly")
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                other = next(r for r in SERVICES if r != role)
                hint = f" (it looks like the {other})" if _serves(channel, SERVICES[other][0]) else ""
                raise UsageError(f"{one} does not serve the imgsim {role} ({service}){hint}: check --{role}") from None
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise UsageError(f"{one} answers gRPC but not as an imgsim service (no health service): check "
                                 f"--{role}") from None
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise UsageError(f"cannot reach the {role} at {one}: {err.details()}") from None
        finally:
            channel.close()


def _serves(channel: grpc.Channel, service: str) -> bool:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        return True
    except grpc.RpcError:
        return False


def connect(args: argparse.Namespace, roles: tuple[str, ...], collection: str | None = None):
    """A SimilarityClient for the roles the command needs, each address checked first."""
    from client.sdk import SimilarityClient

    addresses = {role: address_of(args, role) for role in roles}
    secure = any(a.secure for a in addresses.values())
    tls, token = credentials(args, secure)
    for role, address in addresses.items():
        check_reachable(address.target, role, tls, token)
    embedder = addresses.get("embedder")
    index = addresses.get("index")
    return SimilarityClient(
        embedder=embedder.target.split(",") if embedder else None,
        index=index.target.split(",") if index else None, timeout=args.timeout, tls=tls, token=token,
        stream_retry_s=10.0, collection=collection or "default")

