"""Who may connect: log in with a name and password, or register a new name.

A client sends one of them on the websocket upgrade, as a header or (from a
browser) as a URL query parameter whose value is a JSON object::

    ws://127.0.0.1:5000/?Login={"name":"alice","password":"secret"}
    ws://127.0.0.1:5000/?Register={"name":"bob","password":"hunter22"}

The application's gate is ``any``: one header that says yes admits the client.
"""
from __future__ import annotations

import re
import time
from typing import Any

from lexicons.errors import NotPermitted
from lexicons.header import Header
from lexicons.passwords import verify_password

from .channels import grants
from .models import User

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,24}$")
MIN_PASSWORD = 4
#: The hash of a password nobody knows: checked for unknown names, so that a wrong
#: name takes as long to refuse as a wrong password and names cannot be probed.
NOBODY = ("scrypt$16384$8$1$aa08e7158914c250db1a5d17db627730$"
          "eb3bfaa8dc58bd605dbafedc5e91d951342faf9c9ae2b25d55006e47e3651e9d")


def admit(ws: Any, name: str) -> bool:
    """Remember who this connection is and which channels it may join."""
    ws.auth["user"] = name
    ws.auth["channels"] = grants(name)
    return True


class Login(Header):
    """Admit an existing user whose password matches."""

    def execute(self, name: str, password: str, ws: Any, db: Any) -> bool:
        user = db.get(User, name=name)
        if user is None:   # registered a moment ago on another node of a cluster?
            db.sync()
            user = db.get(User, name=name)
        known = verify_password(password, user.password_hash if user else NOBODY)
        if user is None or not known:
            raise NotPermitted("wrong name or password")
        return admit(ws, user.name)


class Register(Header):
    """Create a user with a new name, then admit them."""

    def execute(self, name: str, password: str, ws: Any, db: Any) -> bool:
        if not NAME.match(name):
            raise NotPermitted("a name is 1 to 24 letters, digits, '.', '_' or '-'")
        if len(password) < MIN_PASSWORD:
            raise NotPermitted(f"a password has at least {MIN_PASSWORD} characters")
        # get_or_create looks up and inserts in one step: two clients racing for
        # the same name cannot both get it.
        user, created = db.get_or_create(
            User, name=name, defaults={"password": password, "joined": time.time()})
        if not created:
            raise NotPermitted(f"the name {name!r} is taken")
        return admit(ws, user.name)
