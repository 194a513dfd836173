# The chat example of the original lexicons README, as its users copied it into main.py
# and ran it with `python main.py run`. Kept as written: the test runs it unchanged.
import asyncio
import time

import orjson

from lexicons import (
    Channel,
    ChannelManager,
    HeaderManager,
    Model,
    ModelManager,
    Server,
    Signal,
    SignalManager,
    Task,
    TaskManager,
)
from lexicons.utils import encrypt

# Models


class User(Model):
    email: str
    name: str

    @property
    def password(self):
        return self._password

    @password.setter
    def password(self, raw):
        self._password = encrypt(raw)


class ChatMessage(Model):
    user: User
    message: str
    timestamp: float


# Headers: functions taking **kwargs, returning True to let the client in


def Login(**kwargs):
    ws, db = kwargs['ws'], kwargs['db']
    user = db.get('User', email=kwargs.get('email'), password=encrypt(kwargs.get('password', '')))
    if user is None:
        asyncio.ensure_future(ws.send(orjson.dumps([{'Errors': ['Authentication failed']}])))
        return False
    ws.auth = user.pk
    return True


# Channels


class Public(Channel):
    pass


# Signals


class CreateChatMessage(Signal):
    def execute(self, ws, db, message, **kwargs):
        user = db.get('User', ws.auth)
        chat_message = db.create('ChatMessage', user=user, message=message,
                                 timestamp=time.time())
        return self.response({'name': user.name, 'message': chat_message.message}, [Public])


# Tasks: execute methods are asynchronous


class OnStartup(Task.Startup):
    async def execute(self, db, **kwargs):
        for email, name, password in (('alice@example.com', 'Alice', 'wonderland'),
                                      ('bob@example.com', 'Bob', 'builder')):
            if db.get('User', email=email) is None:
                db.create('User', email=email, name=name, password=password)


class Online(Task.Interval):
    def set(self):
        return 0.5  # seconds until the next run

    async def execute(self, sv, **kwargs):
        sv.publish([Public], 'Online', {'time': time.time()})


class OnShutdown(Task.Shutdown):
    async def execute(self, db, **kwargs):
        await asyncio.sleep(0)
        db.create('ChatMessage', user=None, message='Server stopped', timestamp=time.time())


server = Server(
    protocol='ws',
    host='localhost',
    port=5000,
    models=ModelManager(User, ChatMessage),
    signals=SignalManager(CreateChatMessage),
    tasks=TaskManager(OnStartup, Online, OnShutdown),
    headers=HeaderManager(Login),
    channels=ChannelManager(Public),
    data='data/',
    trust=[],
)

if __name__ == '__main__':
    server.run()
