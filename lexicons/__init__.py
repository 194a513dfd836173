"""lexicons: a websocket application server for small and medium data sets."""
from .task import Task

__all__ = ["Task"]
