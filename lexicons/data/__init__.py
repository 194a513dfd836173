"""The data layer: models, the in-memory tables, and what makes them durable.

:mod:`.model` declares tables; :mod:`.database` is the ``db`` facade over one
:mod:`.table` per model, with :mod:`.query` for filters and :mod:`.fastpath`
for the generated hot paths; :mod:`.journal`, :mod:`.storage` and
:mod:`.snapshot` keep them on disk, :mod:`.replication` shares them across a
cluster. Channel :mod:`.history`, :mod:`.presence`, browser :mod:`.sessions`
and the :mod:`.lockfile` locks are the other state the daemon keeps. Imports
:mod:`lexicons.errors` and :mod:`lexicons.wire`, never the daemon.
"""
