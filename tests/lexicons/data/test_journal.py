"""Tests of the journal: framing, group commit, policies, torn and damaged files."""
from __future__ import annotations

import logging
import os
import threading

import pytest

from lexicons import Database, Model
from lexicons.data.journal import HEADER, Journal, frame, read_records
from lexicons.errors import StorageError


class Note(Model):
    text: str
    n: int


def payloads(path: str) -> list[bytes]:
    return [payload for _, payload in read_records(path)]


def write_raw(path: str, chunks: list[bytes]) -> bytes:
    data = b"".join(chunks)
    with open(path, "wb") as handle:
        handle.write(data)
    return data


def test_records_are_framed_in_order(tmp_path):
    """Appended records reach the file framed, in order, once committed."""
    path = str(tmp_path / "journal.000001")
    journal = Journal(path, "always")
    seqs = [journal.append(f"r{i}".encode()) for i in range(5)]
    journal.wait(seqs[-1])
    assert payloads(path) == [b"r0", b"r1", b"r2", b"r3", b"r4"]
    assert journal.lag == 0 and journal.size == os.path.getsize(path)
    journal.close()


def test_always_group_commit_shares_fsyncs(tmp_path):
    """Under 'always', threads committing at once share fsyncs; every record lands."""
    path = str(tmp_path / "journal.000001")
    journal = Journal(path, "always")

    def work(n: int) -> None:
        for i in range(40):
            journal.wait(journal.append(f"{n}:{i}".encode()))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    got = payloads(path)
    assert len(got) == 800 and journal.fsyncs < 800
    for n in range(20):   # each thread's records stay in its order
        mine = [p for p in got if p.startswith(f"{n}:".encode())]
        assert mine == [f"{n}:{i}".encode() for i in range(40)]
    journal.close()


@pytest.mark.parametrize("policy", ["everysec", "no"])
def test_lazy_policies_write_before_returning_without_fsync(tmp_path, policy):
    """'everysec' and 'no' hand records to the OS before wait() returns, unfsynced."""
    path = str(tmp_path / "journal.000001")
    journal = Journal(path, policy)
    journal.wait(journal.append(b"one"))
    assert payloads(path) == [b"one"] and journal.fsyncs == 0
    journal.append(b"two")
    journal.sync()    # the once-a-second flush
    assert payloads(path) == [b"one", b"two"]
    assert journal.fsyncs == (1 if policy == "everysec" else 0)
    journal.close()


def test_rotate_cuts_exactly(tmp_path):
    """rotate() puts every earlier record in the old file and later ones in the new."""
    old, new = str(tmp_path / "journal.000001"), str(tmp_path / "journal.000002")
    journal = Journal(old, "everysec")
    journal.append(b"a")
    journal.append(b"b")
    journal.rotate(new)
    journal.wait(journal.append(b"c"))
    assert payloads(old) == [b"a", b"b"] and payloads(new) == [b"c"]
    journal.close()


def test_database_hands_writes_to_the_journal(tmp_path):
    """Each create/update/drop becomes one record; commit() makes them durable."""
    path = str(tmp_path / "journal.000001")
    db = Database([Note])
    db.journal = Journal(path, "always", db.encode_record)
    row = db.create(Note, text="hi", n=1)
    db.update(Note, row.pk, n=2)
    db.drop(Note, row.pk)
    db.commit()
    assert payloads(path) == [
        f'["c","Note",{{"pk":"{row.pk}","text":"hi","n":1}}]'.encode(),
        f'["u","Note","{row.pk}",{{"n":2}}]'.encode(),
        f'["d","Note","{row.pk}"]'.encode()]
    db.journal.close()


def test_commit_waits_only_for_own_writes(tmp_path):
    """A thread that wrote nothing commits at once, without touching the file."""
    db = Database([Note])
    db.journal = Journal(str(tmp_path / "journal.000001"), "always", db.encode_record)
    reader = threading.Thread(target=db.commit)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive() and db.journal.fsyncs == 0
    db.journal.close()


@pytest.mark.parametrize("tail", [
    frame(b"third")[:3],                         # cut inside the header
    frame(b"third")[:HEADER.size + 2],           # cut inside the payload
    frame(b"third")[:-1] + b"X",                 # last record garbled
    b"\x00" * 64,                                # zero-filled tail
])
def test_torn_last_record_is_ignored_with_a_warning(tmp_path, caplog, tail):
    """A torn last record ends the journal with a warning; earlier records stand."""
    path = str(tmp_path / "journal.000001")
    before = write_raw(path, [frame(b"first"), frame(b"second"), tail])
    with caplog.at_level(logging.WARNING, logger="lexicons.journal"):
        assert payloads(path) == [b"first", b"second"]
    assert "ignoring it" in caplog.text
    assert open(path, "rb").read() == before


@pytest.mark.parametrize("damage,offset", [
    (lambda good: good[:HEADER.size] + b"Z" + good[HEADER.size + 1:], 0),
    (lambda good: b"\xff\xff\xff\x7f" + good[4:], 0),
])
def test_damage_before_the_end_stops_with_the_offset(tmp_path, damage, offset):
    """A bad record followed by more data raises StorageError naming file and offset."""
    path = str(tmp_path / "journal.000001")
    before = write_raw(path, [damage(frame(b"first")), frame(b"second"), frame(b"third")])
    with pytest.raises(StorageError, match=f"{path}.*offset {offset}"):
        payloads(path)
    assert open(path, "rb").read() == before


def test_bad_policy_is_refused(tmp_path):
    """An unknown policy is a clear error."""
    with pytest.raises(ValueError, match="unknown journal policy 'sometimes'"):
        Journal(str(tmp_path / "j"), "sometimes")
