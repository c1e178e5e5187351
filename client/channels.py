"""Channels to the services: replica balancing, retries of idempotent calls, TLS and bearer tokens."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc

# Calls that are safe to repeat are retried by gRPC itself when a replica is unreachable (UNAVAILABLE).
RETRY_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "imgsim.v1.Embedder", "method": "Embed"},
                 {"service": "imgsim.v1.Embedder", "method": "GetModelInfo"},
                 {"service": "imgsim.v1.Index", "method": "Search"},
                 {"service": "imgsim.v1.Index", "method": "Delete"},
                 {"service": "imgsim.v1.Index", "method": "GetStats"}],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "2s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_target(address: str | Sequence[str]) -> str:
    """A gRPC target for one address or several replicas given as IP:port ("ipv4:a:1,b:2").

    A DNS name resolves to all its records, so one name for a scaled service spreads over every replica.
    """
    if not isinstance(address, str) and len(address) == 1:
        address = address[0]
    if isinstance(address, str):
        return address if "://" in address or address.startswith(("ipv4:", "ipv6:", "unix:")) else f"dns:///{address}"
    return "ipv4:" + ",".join(address)


@dataclass(frozen=True)
class ClientTls:
    """TLS towards the services: the CA that signed their certificates, and for mutual TLS this client's own."""
    root_ca: Path
    cert: Path | None = None
    key: Path | None = None


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call (works on plain and TLS channels alike)."""

    def __init__(self, token: str):
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), self.header],
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def open_channel(address: str | Sequence[str], tls: ClientTls | None = None, token: str | None = None) -> grpc.Channel:
    options = [
        ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    target = channel_target(address)
    if tls is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.root_ca.read_bytes(),
            private_key=tls.key.read_bytes() if tls.key else None,
            certificate_chain=tls.cert.read_bytes() if tls.cert else None)
        channel = grpc.secure_channel(target, credentials, options=options)
    return grpc.intercept_channel(channel, BearerToken(token)) if token else channel
