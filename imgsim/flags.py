"""Command-line flags with environment-variable fallbacks, each documented in --help."""

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from imgsim.serving import ServingConfig


def add_option(parser: argparse.ArgumentParser, flag: str, env: str, default: Any, help: str,
               type: Callable[[str], Any] = str, **kwargs: Any) -> None:
    """Adds `flag`, whose default comes from `env` when set. argparse converts a string default with `type`,
    so a bad environment value fails at start with the same clear message as a bad flag."""
    fallback = os.environ.get(env, default)
    shown = "unset" if default is None else default
    parser.add_argument(flag, default=fallback, type=type, help=f"{help} [env {env}; default {shown}]", **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 0..65535 (0: any free port), got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text}")


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


SERVING_FLAGS = ("host", "port", "max_workers", "max_message_bytes", "grace_s", "drain_s", "stream_idle_s",
                 "metrics_port", "tls_cert", "tls_key", "tls_client_ca", "auth_token_file", "log_level", "log_format")


def add_serving_options(parser: argparse.ArgumentParser, prefix: str, default_port: int) -> None:
    add_option(parser, "--host", f"{prefix}_HOST", "127.0.0.1", "interface to listen on (0.0.0.0 for all)")
    add_option(parser, "--port", f"{prefix}_PORT", default_port, "port to listen on (0: any free port)",
               type=port_number)
    add_option(parser, "--max-workers", f"{prefix}_MAX_WORKERS", 32, "RPCs served at once", type=positive_int)
    add_option(parser, "--max-message-bytes", f"{prefix}_MAX_MESSAGE_BYTES", 64 * 1024 * 1024,
               "largest request or reply message; larger ones get RESOURCE_EXHAUSTED", type=positive_int)
    add_option(parser, "--grace-s", f"{prefix}_GRACE_S", 10.0, "seconds in-flight calls get on SIGTERM",
               type=non_negative_float)
    add_option(parser, "--drain-s", f"{prefix}_DRAIN_S", 0.0,
               "on SIGTERM, seconds health says NOT_SERVING while calls are still taken (for load balancers)",
               type=non_negative_float)
    add_option(parser, "--stream-idle-s", f"{prefix}_STREAM_IDLE_S", 60.0,
               "a client stream that sends nothing this long is closed with DEADLINE_EXCEEDED",
               type=positive_float)
    add_option(parser, "--metrics-port", f"{prefix}_METRICS_PORT", None,
               "port of the Prometheus /metrics endpoint (0: any free port; unset: none)", type=port_number)
    add_option(parser, "--tls-cert", f"{prefix}_TLS_CERT", None, "PEM certificate chain: serve TLS",
               type=existing_file)
    add_option(parser, "--tls-key", f"{prefix}_TLS_KEY", None, "PEM private key of --tls-cert", type=existing_file)
    add_option(parser, "--tls-client-ca", f"{prefix}_TLS_CLIENT_CA", None,
               "PEM CA: require client certificates it signed (mutual TLS)", type=existing_file)
    add_option(parser, "--auth-token-file", f"{prefix}_AUTH_TOKEN_FILE", None,
               f"file holding the bearer token calls must carry (or the token itself in {prefix}_AUTH_TOKEN); "
               "health and reflection stay open", type=existing_file)
    add_option(parser, "--log-level", f"{prefix}_LOG_LEVEL", "INFO", "DEBUG (one line per call), INFO, WARNING, ERROR",
               choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_option(parser, "--log-format", f"{prefix}_LOG_FORMAT", "text", "text or json (one object per line)",
               choices=["text", "json"])


def serving_config(args: dict[str, Any], prefix: str) -> ServingConfig:
    """Pops the serving flags out of parsed `args` into a ServingConfig; the token comes from file or env."""
    values = {name: args.pop(name) for name in SERVING_FLAGS}
    token_file = values.pop("auth_token_file")
    token = token_file.read_text().strip() if token_file else os.environ.get(f"{prefix}_AUTH_TOKEN") or None
    if token_file and not token:
        raise SystemExit(f"{token_file} is empty: a token file must hold the token")
    return ServingConfig(auth_token=token, **values)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any structured extras."""
    EXTRAS = ("rpc_method", "code", "ms", "peer")

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        entry.update({key: getattr(record, key) for key in self.EXTRAS if hasattr(record, key)})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{key}={getattr(record, key)}" for key in JsonFormatter.EXTRAS if hasattr(record, key))
        return f"{line} {extras}" if extras else line


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
