"""Helpers for the tests: running services and daemons, raw websocket and HTTP clients."""
from .websocket import (
                        RawClient,
                        Running,
                        close_info,
                        http_exchange,
                        open_fds,
                        parse_response,
                        serving,
                        upgrade_request,
)

__all__ = ["RawClient", "Running", "close_info", "http_exchange", "open_fds", "parse_response",
           "serving", "upgrade_request"]
