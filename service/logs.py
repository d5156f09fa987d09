"""Log lines: one per event, as text or JSON (`--log-format`), with the call's request id and,
when auth is on, the caller's name (the token's name, never the token)."""

import json
import logging
import time

from service.api.interceptors import CALLER, REQUEST_ID

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(call)s]: %(message)s"
FORMATS = ("text", "json")


class CallContext(logging.Filter):
    """Adds `request_id` ("-" outside a call), `caller` and `call` (both, for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id, record.caller = REQUEST_ID.get(), CALLER.get()
        record.call = f"{record.request_id} {record.caller}" if record.caller else record.request_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": record.request_id,
            "message": record.getMessage(),
        }
        if record.caller:
            line["caller"] = record.caller
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(CallContext())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
