"""How a service is reached and run: address, limits, TLS, token, metrics, logging, shutdown; and its flags."""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgsim import logs
from imgsim.options import Options, choice, existing_file, integer, number, port

SERVING_FLAGS = ("host", "port", "max_message_bytes", "max_concurrent_streams", "grace_s", "drain_s",
                 "stream_idle_s", "metrics_host", "metrics_port", "tls_cert", "tls_key", "tls_client_ca",
                 "auth_token_file", "log_level", "log_format")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServingConfig:
    """The serving settings of one service."""
    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_concurrent_streams: int = 256  # per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
    grace_s: float = 10.0
    drain_s: float = 0.0  # NOT_SERVING is announced this long before new calls are refused
    stream_idle_s: float = 60.0  # a client stream silent this long is closed with DEADLINE_EXCEEDED
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed (mutual TLS)
    auth_token: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def add_serving_options(options: Options, default_port: int) -> None:
    network = options.group("network")
    network.add("--host", "127.0.0.1", "interface to listen on (0.0.0.0: all)")
    network.add("--port", default_port, "port to listen on (0: any free port)", type=port)
    network.add("--max-message-bytes", MAX_MESSAGE_BYTES,
                "largest request or reply message; larger ones get RESOURCE_EXHAUSTED",
                type=integer(64 * 1024, 1024 * 1024 * 1024))
    network.add("--max-concurrent-streams", 256, "calls one client connection may have open at once",
                type=integer(1, 65536))
    network.add("--stream-idle-s", 60.0, "a client stream that sends nothing this long is closed with "
                "DEADLINE_EXCEEDED", type=number(0, 86400, low_open=True))
    lifecycle = options.group("shutdown")
    lifecycle.add("--drain-s", 0.0, "on SIGTERM, seconds health says NOT_SERVING while calls are still taken "
                  "(for load balancers)", type=number(0, 3600))
    lifecycle.add("--grace-s", 10.0, "then, seconds calls in flight get to finish", type=number(0, 3600))
    security = options.group("security")
    security.add("--tls-cert", None, "PEM certificate chain: serve TLS", type=existing_file)
    security.add("--tls-key", None, "PEM private key of --tls-cert", type=existing_file)
    security.add("--tls-client-ca", None, "PEM CA: require client certificates it signed (mutual TLS)",
                 type=existing_file)
    security.add("--auth-token-file", None,
                 f"file holding the bearer token calls must carry (or the token itself in "
                 f"{options.env_prefix}_AUTH_TOKEN); health and reflection stay open", type=existing_file)
    observability = options.group("logging and metrics")
    observability.add("--log-level", "INFO", "DEBUG (one line per call), INFO, WARNING, ERROR",
                      type=choice(*logs.LEVELS, case_insensitive=True))
    observability.add("--log-format", "text", "text, or json (one object per line on stderr)",
                      type=choice(*logs.FORMATS, case_insensitive=True))
    observability.add("--metrics-port", None, "port of the Prometheus /metrics endpoint (0: any free port; "
                      "unset: none)", type=port)
    observability.add("--metrics-host", "127.0.0.1", "interface of the metrics endpoint (0.0.0.0: all)")


def serving_config(args: dict[str, Any], prefix: str, parser: argparse.ArgumentParser) -> ServingConfig:
    """Pops the serving flags out of parsed `args` into a ServingConfig; the token comes from file or env."""
    values = {name: args.pop(name) for name in SERVING_FLAGS}
    token_file = values.pop("auth_token_file")
    token = token_file.read_text().strip() if token_file else os.environ.get(f"{prefix}_AUTH_TOKEN") or None
    if token_file and not token:
        parser.error(f"--auth-token-file {token_file} is empty: a token file must hold the token")
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        parser.error("TLS needs both --tls-cert and --tls-key")
    if values["tls_client_ca"] and not values["tls_cert"]:
        parser.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    return ServingConfig(auth_token=token, **values)
