"""lexicons: a websocket application server for small and medium data sets."""
from .database import Database
from .model import Model
from .passwords import hash_password, verify_password
from .task import Task

__all__ = ["Database", "Model", "Task", "hash_password", "verify_password"]
