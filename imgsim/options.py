"""Command-line options with environment-variable fallbacks: one parser for both, so a bad value in either
stops the start with the same one-line message naming the flag, the variable and the allowed range."""

import argparse
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An int within [low, high] (either bound may be open)."""
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer{bounds_text(low, high)}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer{bounds_text(low, high)}, got {text}")
        return value
    parse.__name__ = "integer"
    return parse


def number(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """A finite float within [low, high] ((low, high] with low_open)."""
    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            value = math.nan
        too_low = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"must be a finite number{bounds_text(low, high, low_open)}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def bounds_text(low, high, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" {'>' if low_open else '>='} {low:g} and <= {high:g}" if low_open else f" from {low:g} to {high:g}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" <= {high:g}"
    return ""


def choice(*allowed: str, case_insensitive: bool = False) -> Callable[[str], str]:
    """One of `allowed`; argparse does not check `choices` on defaults, so environment values are checked here."""
    def parse(text: str) -> str:
        value = str(text).strip()
        if case_insensitive:
            value = {a.lower(): a for a in allowed}.get(value.lower(), value)
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return value
    parse.__name__ = "choice"
    return parse


def boolean(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


def port(text: str) -> int:
    return integer(0, 65535)(text)


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def text(text: str) -> str:
    return str(text)


class Options:
    """Adds options to a parser (or one of its groups); each one's default comes from its environment
    variable when set, checked by the same parser as the flag."""

    def __init__(self, parser: argparse.ArgumentParser, env_prefix: str, root: argparse.ArgumentParser | None = None):
        self.parser = parser
        self.root = root or parser
        self.env_prefix = env_prefix
        if not hasattr(self.root, "env_errors"):
            self.root.env_errors = []

    def group(self, title: str) -> "Options":
        return Options(self.root.add_argument_group(title), self.env_prefix, self.root)

    def env_name(self, flag: str) -> str:
        return f"{self.env_prefix}_{flag.lstrip('-').replace('-', '_').upper()}"

    def add(self, flag: str, default: Any, help: str, type: Callable[[str], Any] = text, env: str | None = None,
            metavar: str | None = None) -> None:
        env = env or self.env_name(flag)
        shown = "unset" if default is None else default
        value = self.from_env(env, type, default)
        self.parser.add_argument(flag, default=value, type=type, metavar=metavar,
                                 help=f"{help} [env {env}; default {shown}]")

    def add_switch(self, flag: str, default: bool, help: str, env: str | None = None) -> None:
        """A boolean as --flag / --no-flag (and its variable as true/false)."""
        env = env or self.env_name(flag)
        value = self.from_env(env, boolean, default)
        self.parser.add_argument(flag, default=value, action=argparse.BooleanOptionalAction,
                                 help=f"{help} [env {env}; default {'on' if default else 'off'}]")


    def from_env(self, env: str, type: Callable[[str], Any], default: Any) -> Any:
        if env not in os.environ:
            return default
        try:
            return type(os.environ[env])
        except (argparse.ArgumentTypeError, ValueError) as err:
            self.root.env_errors.append(f"environment variable {env}={os.environ[env]!r}: {err}")
            return default


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses argv; a bad flag or environment value exits with code 2 and one line naming it."""
    args = parser.parse_args(argv)
    errors = getattr(parser, "env_errors", [])
    if errors:
        parser.error(errors[0])
    return args
