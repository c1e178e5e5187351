"""Command-line flags with environment-variable fallbacks, each documented in --help."""

import argparse
import logging
import os
from typing import Any, Callable


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


def add_common_server_options(parser: argparse.ArgumentParser, prefix: str, default_port: int) -> None:
    add_option(parser, "--host", f"{prefix}_HOST", "127.0.0.1", "interface to listen on (0.0.0.0 for all)")
    add_option(parser, "--port", f"{prefix}_PORT", default_port, "port to listen on (0: any free port)", type=port_number)
    add_option(parser, "--max-workers", f"{prefix}_MAX_WORKERS", 32, "concurrent RPCs served", type=positive_int)
    add_option(parser, "--grace-s", f"{prefix}_GRACE_S", 10.0, "seconds in-flight calls get on SIGTERM",
               type=non_negative_float)
    add_option(parser, "--log-level", f"{prefix}_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR",
               choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
