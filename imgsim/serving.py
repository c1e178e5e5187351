"""gRPC server plumbing both services share: options, TLS, token auth, health, reflection, metrics, shutdown."""

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from imgsim.interceptors import ObservingInterceptor, TokenAuthInterceptor
from imgsim.metrics import Metrics
from imgsim.reflection import enable_reflection

log = logging.getLogger(__name__)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class PortInUse(RuntimeError):
    """The address could not be bound: another process holds it, or it is not an address of this host."""


class BadServingConfig(ValueError):
    """A TLS or token setting that cannot work, found before serving."""


@dataclass(frozen=True)
class ServingConfig:
    """How a service is reached: address, limits, TLS, token, metrics, logging, shutdown."""
    host: str = "127.0.0.1"
    port: int = 0
    max_workers: int = 32
    max_message_bytes: int = 64 * 1024 * 1024
    grace_s: float = 10.0
    drain_s: float = 0.0  # NOT_SERVING is announced this long before new calls are refused
    stream_idle_s: float = 60.0  # a client stream silent this long is closed with DEADLINE_EXCEEDED
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed (mutual TLS)
    auth_token: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        # Python gRPC sets SO_REUSEPORT by default: a second server on the same port would bind quietly and
        # take a share of the calls. One port, one server.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def server_credentials(config: ServingConfig) -> grpc.ServerCredentials | None:
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise BadServingConfig("TLS needs both --tls-cert and --tls-key")
    try:
        key, cert = config.tls_key.read_bytes(), config.tls_cert.read_bytes()
        client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    except OSError as err:
        raise BadServingConfig(f"cannot read a TLS file: {err}") from err
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class Health:
    """The standard grpc.health.v1 service for one named service (and the server as a whole, "")."""

    def __init__(self, service_name: str):
        self.service_name = service_name
        self.servicer = health.HealthServicer()
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", self.service_name):
            self.servicer.set(name, status)


def build_server(config: ServingConfig, add_servicers: Callable[[grpc.Server], None], service_name: str,
                 health_state: Health, metrics: Metrics) -> tuple[grpc.Server, int, int | None]:
    """Creates and starts a server on config.address (port 0: any free one), and the metrics endpoint if
    asked for; returns the server, its port and the metrics port (None without one)."""
    credentials = server_credentials(config)
    interceptors = [ObservingInterceptor(metrics)]
    if config.auth_token:
        interceptors.append(TokenAuthInterceptor(config.auth_token))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers), interceptors=interceptors,
                         options=server_options(config.max_message_bytes))
    add_servicers(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_state.servicer, server)
    enable_reflection((service_name, HEALTH_SERVICE), server)
    try:
        if credentials is None:
            port = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, credentials)
    except RuntimeError as err:  # grpcio raises RuntimeError when it cannot bind
        raise PortInUse(f"cannot listen on {config.address}: the port is taken or the host is not local "
                        f"({err})") from err
    server.start()
    metrics_port = metrics.serve(config.host, config.metrics_port) if config.metrics_port is not None else None
    return server, port, metrics_port


@dataclass
class RunningServer:
    """A started server and what stops with it: `stop_taking_calls` makes the servicer refuse new work,
    `close` releases the service's own resources once the last call is done."""
    server: grpc.Server
    port: int
    health: Health
    serving: ServingConfig
    metrics: Metrics
    metrics_port: int | None
    stop_taking_calls: Callable[[], None]
    close: Callable[[], None]

    def stop(self, grace_s: float | None = None) -> None:
        """Stops gracefully: NOT_SERVING first, calls still taken for drain_s so load balancers notice, then
        no new calls, those in flight get grace_s (this one's, if given) to finish, then `close`."""
        self.health.set_serving(False)
        time.sleep(self.serving.drain_s)
        self.stop_taking_calls()
        self.server.stop(self.serving.grace_s if grace_s is None else grace_s).wait()
        self.close()
        self.metrics.stop()


def wait_for_stop_signal() -> None:
    """Blocks until SIGTERM or SIGINT; the caller then drains and stops its server."""
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    # Python runs signal handlers in the main thread, but the kernel may deliver the signal to any of
    # gRPC's threads, which does not wake a main thread blocked without a timeout: wake it regularly.
    while not stop_requested.wait(0.2):
        pass
    log.info("stop signal received: draining")
