"""A chat: users with passwords, public rooms, direct messages, a web page.

Serve it with ``APP = "examples.chat"`` in the settings (the repository's
``settings.py`` does) and open http://127.0.0.1:5000/ in a browser. The
building blocks, one module each:

* :mod:`.models` -- ``User`` (with a hashed ``password``), ``Room``, ``ChatMessage``
* :mod:`.headers` -- ``Login`` and ``Register``, combined with ``any``
* :mod:`.channels` -- ``public``, ``room:{name}``, ``user:{name}``
* :mod:`.signals` -- ``Rooms``, ``CreateRoom``, ``Join``, ``Leave``, ``Send``,
  ``History``, ``Online``
* :mod:`.tasks` -- ``CreateLobby`` at start, ``Presence`` and ``PruneMessages``
  on intervals
* ``static/`` -- the page (``index.html``, ``chat.js``, ``chat.css``) and
  ``lexicons.js``, a small client for the native protocol
"""
from lexicons import ChannelManager, HeaderManager, ModelManager, SignalManager, TaskManager

from .channels import Inbox, Public, RoomChannel
from .headers import Login, Register
from .models import ChatMessage, Room, User
from .signals import CreateRoom, History, Join, Leave, Online, Rooms, Send
from .tasks import CreateLobby, Presence, PruneMessages

models = ModelManager(User, Room, ChatMessage)
headers = HeaderManager(Login, Register, gate=any)
channels = ChannelManager(Public, RoomChannel, Inbox)
signals = SignalManager(Rooms, CreateRoom, Join, Leave, Send, History, Online)
tasks = TaskManager(CreateLobby, Presence, PruneMessages)
static_dir = "static"
