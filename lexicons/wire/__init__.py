"""The wire protocols, pure: bytes or text in, events out, replies out.

Nothing here opens a socket, starts a thread or reads a clock, so every module
is tested without a network: websocket frames (:mod:`.frames`), HTTP request
heads (:mod:`.http`), the native protocol (:mod:`.protocol`) and its call
arguments (:mod:`.arguments`), the high-templar protocol (:mod:`.hightemplar`),
the static cluster's wire format (:mod:`.cluster`), and the events they all
produce (:mod:`.events`). Imports only :mod:`lexicons.errors` and each other.
"""
