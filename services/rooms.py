"""The rooms service: channel membership, subscription permission, fan-out.

Theory of operation
-------------------
Membership is a dict per channel (a connection is in a channel at most
once) plus, on each connection, the set of its channels, so a disconnect
cleans up in time proportional to its own channels. Broadcasting reads an
immutable snapshot (a tuple) of a channel's members, rebuilt only after the
membership changed, so fan-out takes no lock.

A broadcast is encoded once (JSON once) and framed once: server frames are
not masked, so the same bytes go to every member (a second, compressed frame
is made once for the members that negotiated permessage-deflate). Each
member's outbound buffer gets the frame appended
(:func:`lexicons.connection.fan_out`); the reader thread that ran the signal
then writes each member's queue in one ``send`` once its batch of messages is
handled (or the hub's flusher does, for broadcasts from other threads). A
slow member only fills its own buffer.

Cross-node delivery: when the daemon runs a ``backplane`` service, publishing
goes through ``backplane.publish_many(channels, message)`` (the encoded text,
unframed) instead of local delivery; the backplane calls back
:meth:`RoomsService.deliver` (or :meth:`RoomsService.deliver_local` for one
channel) on every node with members, once per broadcast. This node
tells the backplane ``join(channel)`` when it gains its first local member of
a channel and ``leave(channel)`` when it loses its last.

Channels whose class keeps history or presence are handed to
:class:`services.channelstate.ChannelState` (publishing with positions,
recovery, presence); the service makes one only when the application declares
such a channel, so other channels' fan-out never looks at it.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from lexicons.channel import ChannelSet
from lexicons.daemon import filters
from lexicons.daemon.connection import Connection, State, fan_out
from lexicons.daemon.service import Service
from lexicons.errors import CallError
from lexicons.wire import protocol
from lexicons.wire.frames import text_frame
from services.channelstate import HISTORY_SPACE, ChannelState

_EMPTY: tuple[Connection, ...] = ()


class RoomsService(Service):
    """Own channel membership and fan-out (see the module doc)."""

    name = "rooms"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.channels = ChannelSet(())
        self.backplane: Any = None
        self.published = 0
        self.delivered = 0
        self._lock = threading.Lock()
        self._members: dict[str, dict[Connection, None]] = {}
        self._snapshots: dict[str, tuple[Connection, ...]] = {}
        self.channel_state: ChannelState | None = None  # history and presence, if declared

    def setup(self) -> None:
        # first: the backplane must be handed the filtered deliver, if the stage has filters
        filters.for_daemon(self.manager).install_rooms(self)
        self.channels = ChannelSet(self.manager.app.channels)
        if self.manager.has_service("backplane"):
            self.backplane = self.manager.get_service("backplane")
            self.backplane.set_receiver(self.deliver_local)
            self.backplane.set_many_receiver(self.deliver)
        classes = list(self.manager.app.channels)
        if any(cls.history_size or cls.presence for cls in classes):
            self.channel_state = ChannelState(self, classes)
            self.channel_state.load()
            if self.backplane is not None:
                self.backplane.set_receiver(self.channel_state.deliver, HISTORY_SPACE)

    def main(self) -> None:
        state = self.channel_state
        if state is None or state.presence is None:
            self.stopping.wait()
            return
        while not self.stopping.wait(self.settings.PRESENCE_TTL / 3):
            try:
                state.tick()
            except Exception:  # Redis out of reach: the next tick tries again
                self.log.exception("presence heartbeat failed")

    def teardown(self) -> None:
        if self.channel_state is not None:
            self.channel_state.save()

    def info(self) -> dict[str, Any]:
        with self._lock:
            channels = len(self._members)
            memberships = sum(len(m) for m in self._members.values())
        info = {"channels": channels, "memberships": memberships,
                "published": self.published, "delivered": self.delivered,
                "backplane": self.backplane is not None}
        if self.channel_state is not None:
            info.update(self.channel_state.info())
        return info

    # --- membership ---------------------------------------------------------------------

    def join(self, conn: Connection, channel: str, check: bool = True,
             announce: bool = True) -> None:
        """Put *conn* in *channel*; with *check*, the channel must exist and permit it.

        Raises CallError (unknown channel) or NotPermitted (its permit hook said no).
        *announce* False leaves a presence channel's join to the caller.
        """
        if check:
            self.channels.check(conn, channel)
        with self._lock:
            if conn.state is not State.OPEN:
                return  # closing: on_close may already have run, do not resurrect it
            members = self._members.get(channel)
            first = members is None
            if first:
                members = self._members[channel] = {}
            elif conn in members:
                return
            members[conn] = None
            conn.channels.add(channel)
            self._snapshots.pop(channel, None)
            if first and self.backplane is not None:
                self.backplane.join(channel, *self._space(channel))
        if announce and self.channel_state is not None and self.channel_state.tracks(channel):
            self.channel_state.joined(conn, channel)

    def subscribe(self, conn: Connection, channel: str, recover: Any = None,
                  check: bool = True) -> Any:
        """Join *channel* (with *check*, if its permit hook agrees); recover since *recover*.

        Answers None for a channel without history, else its position (and, with
        *recover*, whether the missed publications could be sent).
        """
        if check:
            self.channels.check(conn, channel)
        state = self.channel_state
        if state is not None and state.keeps(channel):
            return state.subscribe(conn, channel, recover)
        if recover is not None:
            raise CallError(f"channel {channel[:100]!r} keeps no history: there is nothing "
                            f"to recover")
        self.join(conn, channel, check=False)
        return None

    def _space(self, channel: str) -> tuple[str, ...]:
        """Return the backplane space of *channel* as arguments: () for the default one."""
        if self.channel_state is None or self.channel_state.space(channel) != HISTORY_SPACE:
            return ()
        return (HISTORY_SPACE,)

    def leave(self, conn: Connection, channel: str) -> None:
        """Take *conn* out of *channel* (nothing happens if it was not in it)."""
        with self._lock:
            left = self._leave_locked(conn, channel)
        if left and self.channel_state is not None:
            self._presence_left(conn, (channel,))

    def drop(self, conn: Connection) -> None:
        """Take a closed connection out of every channel."""
        with self._lock:
            channels = [c for c in list(conn.channels) if self._leave_locked(conn, c)]
        if self.channel_state is not None:
            self._presence_left(conn, channels)

    def _presence_left(self, conn: Connection, channels: Iterable[str]) -> None:
        state = self.channel_state
        for channel in channels:
            if state.tracks(channel):
                try:
                    state.left(conn, channel)
                except Exception:  # Redis out of reach: the entry expires by itself
                    self.log.exception("presence: cannot record that %s left %r",
                                       conn.id, channel)

    def _leave_locked(self, conn: Connection, channel: str) -> bool:
        """Needs self._lock. Return whether *conn* was in *channel*."""
        conn.channels.discard(channel)
        members = self._members.get(channel)
        if members is None or conn not in members:
            return False
        del members[conn]
        self._snapshots.pop(channel, None)
        if not members:
            del self._members[channel]
            # a subscriber still recovering needs the channel's broadcasts from Redis
            if self.backplane is not None and not (self.channel_state is not None
                                                   and self.channel_state.holds(channel)):
                self.backplane.leave(channel, *self._space(channel))
        return True

    def history(self, channel: str, limit: int = 100) -> dict[str, Any]:
        """Return a history channel's position and newest *limit* publications."""
        if self.channel_state is None:
            raise CallError(f"channel {channel[:100]!r} keeps no history")
        return self.channel_state.read(channel, limit)

    def presence(self, channel: str) -> dict[str, Any]:
        """Return who is in a presence channel: ``{channel, count, members}``."""
        if self.channel_state is None:
            raise CallError(f"channel {channel[:100]!r} keeps no presence")
        return self.channel_state.members(channel)

    def members(self, channel: str) -> tuple[Connection, ...]:
        """Return the connections in *channel* now (a snapshot)."""
        snapshot = self._snapshots.get(channel)
        if snapshot is None:
            with self._lock:
                members = self._members.get(channel)
                snapshot = tuple(members) if members else _EMPTY
                self._snapshots[channel] = snapshot
        return snapshot

    # --- fan-out ------------------------------------------------------------------------

    def publish(self, channels: Iterable[str], name: str, payload: Any) -> None:
        """Broadcast ``[{name: payload}]`` on *channels* (raises TypeError if not JSON-able)."""
        channels = tuple(channels)
        if self.channel_state is not None and self.channel_state.takes(channels):
            self.channel_state.publish(channels, name, payload)  # positions, history
            return
        message = protocol.broadcast(name, payload).encode("utf-8")
        self.published += 1
        if self.backplane is not None:
            if len(channels) == 1:
                self.backplane.publish(channels[0], message)
            else:  # one broadcast on several channels: a member of several gets it once
                self.backplane.publish_many(channels, message)
        else:
            self.deliver(channels, message)

    def deliver_local(self, channel: str, message: bytes) -> None:
        """Deliver an encoded message to this node's members of *channel* (frames it once)."""
        self.deliver((channel,), message)

    def deliver(self, channels: tuple[str, ...], message: bytes) -> None:
        """Deliver an encoded message to the local members of *channels*, each once."""
        if len(channels) == 1:
            members = self.members(channels[0])
        else:
            members = tuple(dict.fromkeys(c for ch in channels for c in self.members(ch)))
        if not members:
            return
        self.delivered += fan_out(members, text_frame(message), message)
