"""Logging for the services and the command line: text or one JSON object per line, imgsim's own loggers at
the chosen level and third-party ones at WARNING, so DEBUG shows our calls and not a decoder's chunks."""

import json
import logging
import sys

OWN_LOGGERS = ("imgsim", "index_service", "embedder_service", "client")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any structured extras."""
    EXTRAS = ("rpc_method", "code", "ms", "peer", "collection")

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


def configure_logging(level: str = "INFO", log_format: str = "text", third_party_level: str = "WARNING") -> None:
    """Sends every log line to stderr in one format; Python warnings go through logging too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=third_party_level, handlers=[handler], force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
