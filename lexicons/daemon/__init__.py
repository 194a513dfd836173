"""The daemon: services and their manager, and the parts that own threads and sockets.

The :mod:`.service` base class and the :mod:`.manager` that supervises
services, the :mod:`.bootstrap` that starts them, :mod:`.settings`, the
:mod:`.control` socket's protocol, the websocket :mod:`.connection` core and
its :mod:`.filters`, the :mod:`.application` a daemon serves, and the adapters
for code written for zephserver (:mod:`.zephserver`, :mod:`.aliases`). The
drivers in ``services/`` build on it. Imports :mod:`lexicons.data`,
:mod:`lexicons.wire` and :mod:`lexicons.errors`, never the public API modules.
"""
