"""Running a grpc.aio server: options, TLS, token auth, health, reflection, metrics, signals and shutdown.

A service binds its port first (a second server on a taken port fails before loading anything), starts
answering health as NOT_SERVING, loads its model or data, then says SERVING. Streams and slow clients
cost a coroutine, not a worker thread, so they cannot starve health checks or other calls.
"""

import asyncio
import logging
import signal
import ssl
import threading
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from imgsim.server.config import ServingConfig
from imgsim.server.interceptors import ObservingInterceptor, TokenAuthInterceptor
from imgsim.server.metrics import Metrics
from imgsim.server.reflection import enable_reflection

log = logging.getLogger(__name__)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# HTTP/2 flow-control window per stream and connection. gRPC's default BDP probing starts at 64 KiB and
# grows slowly, which throttles many concurrent streams of large messages on one connection (ghz's default).
FLOW_CONTROL_WINDOW = 8 * 1024 * 1024
CUT_MARGIN_S = 0.1


class PortInUse(RuntimeError):
    """The address could not be bound: another process holds it, or it is not an address of this host."""


class BadServingConfig(ValueError):
    """A TLS or token setting that cannot work, found before serving."""


class StartAborted(Exception):
    """A stop signal came while the service was loading; it stopped without serving."""


def server_options(config: ServingConfig) -> list[tuple[str, int]]:
    return [
        # Python gRPC sets SO_REUSEPORT by default: a second server on the same port would bind quietly and
        # take a share of the calls. One port, one server.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.http2.lookahead_bytes", FLOW_CONTROL_WINDOW),
        ("grpc.http2.max_frame_size", 1024 * 1024),
        # Clients that vanish without closing (a killed process behind NAT) are noticed and their calls ended.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_credentials(config: ServingConfig) -> grpc.ServerCredentials | None:
    """The TLS credentials, after checking the files really are a matching PEM certificate and key (gRPC
    itself would only fail at the first handshake, or report a bind failure)."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise BadServingConfig("TLS needs both --tls-cert and --tls-key")
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            context.load_verify_locations(config.tls_client_ca)
        key, cert = config.tls_key.read_bytes(), config.tls_cert.read_bytes()
        client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    except (OSError, ssl.SSLError) as err:
        raise BadServingConfig(f"cannot use the TLS files (--tls-cert {config.tls_cert}, --tls-key "
                               f"{config.tls_key}{', --tls-client-ca ' + str(config.tls_client_ca) if config.tls_client_ca else ''}): "
                               f"{err}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class Health:
    """The standard grpc.health.v1 service for one named service (and the server as a whole, "")."""

    def __init__(self, service_name: str):
        self.service_name = service_name
        self.servicer = HealthServicer()
        self.serving = False

    async def set_serving(self, serving: bool) -> None:
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", self.service_name):
            await self.servicer.set(name, status)


async def start_server(config: ServingConfig, add_servicers: Callable[[grpc.aio.Server], None], service_name: str,
                       health: Health, metrics: Metrics) -> tuple[grpc.aio.Server, int, int | None]:
    """Binds config.address (port 0: any free one), starts the server with health NOT_SERVING, and the
    metrics endpoint if asked for; returns the server, its port and the metrics port (None without one)."""
    credentials = server_credentials(config)
    interceptors = [ObservingInterceptor(metrics)]
    if config.auth_token:
        interceptors.append(TokenAuthInterceptor(config.auth_token))
    server = grpc.aio.server(interceptors=interceptors, options=server_options(config))
    add_servicers(server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    enable_reflection((service_name, HEALTH_SERVICE), server)
    await health.set_serving(False)
    try:
        if credentials is None:
            port = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, credentials)
    except RuntimeError as err:  # grpcio raises RuntimeError when it cannot bind
        raise PortInUse(f"cannot listen on {config.address}: the port is taken or the host is not an address "
                        f"of this machine ({err})") from None
    if port == 0 and config.port != 0:
        raise PortInUse(f"cannot listen on {config.address}: the port is taken or the host is not an address of "
                        "this machine")
    await server.start()
    metrics_port = None
    if config.metrics_port is not None:
        try:
            metrics_port = metrics.serve(config.metrics_host, config.metrics_port)
        except OSError as err:
            await server.stop(0)
            raise PortInUse(f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: "
                            f"{err.strerror}") from None
    return server, port, metrics_port


@dataclass
class RunningServer:
    """A started server and what stops with it: `close` releases the service's own resources (in a thread)
    once the last call is done."""
    server: grpc.aio.Server
    port: int
    health: Health
    serving: ServingConfig
    metrics: Metrics
    metrics_port: int | None
    close: Callable[[], None]
    # Called just before calls still open at the end of the grace are cut: a service can refuse to commit
    # work for them (grpc.aio ends a cut call's request stream as if the client had closed it).
    cutting: Callable[[], None] = lambda: None
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    loop_thread: threading.Thread | None = None
    stopped: bool = False

    async def stop_async(self, grace_s: float | None = None) -> None:
        """Stops gracefully: NOT_SERVING first, calls still taken for drain_s so load balancers notice, then
        no new calls, those in flight get grace_s (this one's, if given) to finish, then `close`."""
        if self.stopped:
            return
        self.stopped = True
        await self.health.set_serving(False)
        await asyncio.sleep(self.serving.drain_s)
        grace = self.serving.grace_s if grace_s is None else grace_s
        stopping = asyncio.create_task(self.server.stop(grace))
        done, _ = await asyncio.wait({stopping}, timeout=max(0.0, grace - CUT_MARGIN_S))
        if not done:
            self.cutting()
        await stopping
        await asyncio.to_thread(self.close)
        self.metrics.stop()

    def stop(self, grace_s: float | None = None) -> None:
        """stop_async from another thread (tests and embedding programs); ends the loop thread if it owns one."""
        if self.stopped or not self.loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self.stop_async(grace_s), self.loop).result()
        if self.loop_thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.loop_thread.join()


def run_in_background(start: Callable[[], Awaitable[RunningServer]]) -> RunningServer:
    """Runs a server on an event loop in a thread of its own (for tests and programs that embed a service)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-loop", daemon=True)
    thread.start()
    try:
        running = asyncio.run_coroutine_threadsafe(start(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        raise
    running.loop_thread = thread
    return running


def serve_until_signalled(start: Callable[[threading.Event], Awaitable[RunningServer]]) -> None:
    """Starts a service and serves until SIGTERM or SIGINT, then drains and stops it.

    `start` gets an event that is set when a stop signal arrives, so that loading can give up early
    (raising StartAborted): a service stopped while loading exits cleanly and says so.
    """
    async def main() -> None:
        stop_requested = asyncio.Event()
        stopping = threading.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            stopping.set()
            stop_requested.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            running = await start(stopping)
        except StartAborted as err:
            log.info("stopped before serving: %s", err)
            return
        await stop_requested.wait()
        log.info("draining: NOT_SERVING for %g s, then %g s for calls in flight", running.serving.drain_s,
                 running.serving.grace_s)
        await running.stop_async()
        log.info("stopped")

    asyncio.run(main())
