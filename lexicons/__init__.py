"""lexicons: a websocket application server for small and medium data sets."""
from .database import Database
from .model import Model
from .passwords import hash_password, verify_password

__all__ = ["Database", "Model", "hash_password", "verify_password"]
