"""lexicons: a websocket application server for small and medium data sets."""
from .application import ChannelManager, HeaderManager, ModelManager, SignalManager, TaskManager
from .channel import Channel
from .header import Header
from .server import Server
from .signal import Response, Signal

__all__ = [
    "Channel", "ChannelManager", "Header", "HeaderManager", "ModelManager", "Response",
    "Server", "Signal", "SignalManager", "TaskManager",
]
