"""gRPC server plumbing both services share: socket options, health, reflection, graceful shutdown."""

import logging
import signal
import threading
from concurrent import futures
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)


class PortInUse(RuntimeError):
    """The address could not be bound: another process holds it, or it is not an address of this host."""


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        # Python gRPC sets SO_REUSEPORT by default: a second server on the same port would bind quietly and
        # take a share of the calls. One port, one server.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


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


def build_server(
    address: str,
    add_servicers: Callable[[grpc.Server], None],
    full_service_name: str,
    health_state: Health,
    max_message_bytes: int,
    max_workers: int,
) -> tuple[grpc.Server, int]:
    """Creates and starts a server on `address` ("host:port", port 0 for any free one); returns it and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=server_options(max_message_bytes))
    add_servicers(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_state.servicer, server)
    reflection.enable_server_reflection(
        (full_service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:  # grpcio raises RuntimeError when it cannot bind
        raise PortInUse(f"cannot listen on {address}: the port is taken or the host is not local ({err})") from err
    server.start()
    return server, port


def wait_for_stop_signal() -> None:
    """Blocks until SIGTERM or SIGINT; the caller then drains and stops its server."""
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    stop_requested.wait()
    log.info("stop signal received: draining")
