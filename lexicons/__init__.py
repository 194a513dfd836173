"""lexicons: a websocket application server for small and medium data sets."""
from .application import ChannelManager, HeaderManager, ModelManager, SignalManager, TaskManager
from .channel import Channel
from .database import Database
from .header import Header
from .model import Model
from .passwords import hash_password, verify_password
from .server import Server
from .signal import Response, Signal
from .task import Task

__all__ = [
    "Channel", "ChannelManager", "Database", "Header", "HeaderManager", "Model", "ModelManager",
    "Response", "Server", "Signal", "SignalManager", "Task", "TaskManager", "hash_password",
    "verify_password",
]
