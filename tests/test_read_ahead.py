"""`storage.read_ahead`: the next batch read on a thread while the caller writes the
current one (a PostgreSQL trials export), with the items, errors and early stops of a plain
iteration; and a server that goes away part way through a real export."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from studyctl.errors import StorageError
from studyctl.inspect import summary
from studyctl.storage.read_ahead import read_ahead
from studyctl.storage.reader import open_reader
from studyctl.storage.urls import mask_url

from .test_scale import _mixed_study

WAIT_S = 10.0  # how long a test waits for what should happen at once


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "studyctl-read-ahead"]


def test_the_next_item_is_read_while_the_caller_holds_the_current_one() -> None:
    """Item 2's read starts before the caller is done with item 1 (a plain iteration reads
    it only when asked, and this test then fails on its wait), and every item comes in
    order."""
    second_read = threading.Event()

    def items() -> Iterator[int]:
        yield 1
        second_read.set()
        yield 2
        yield 3

    got = []
    for item in read_ahead(items()):
        if item == 1:
            assert second_read.wait(WAIT_S), "item 2 was not read while item 1 was held"
        got.append(item)
    assert got == [1, 2, 3]
    assert not _threads()


def test_an_error_of_the_reads_comes_after_the_items_read_before_it() -> None:
    def items() -> Iterator[int]:
        yield from range(5)
        raise RuntimeError("connection lost")

    got = []
    with pytest.raises(RuntimeError, match="connection lost"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_a_caller_that_stops_leaves_the_thread_to_end_without_reading_on() -> None:
    """At most one item waits for the caller: one that stops after two items has had at
    most four read (two taken, one waiting, one being read), and the thread ends."""
    taken = []

    def items() -> Iterator[int]:
        for i in range(1000):
            taken.append(i)
            yield i

    for item in read_ahead(items()):
        if item == 1:
            break
    for thread in _threads():
        thread.join(WAIT_S)
    assert not _threads()
    assert len(taken) <= 4


def test_a_server_gone_part_way_through_an_export_is_one_storage_error_after_the_rows_read(
    postgres_url: str, tmp_path: Path
) -> None:
    """A PostgreSQL export (read ahead) whose server connection is cut after its first rows
    are written: the rows of the batches read before stay written, and the export ends with
    one `StorageError` naming the database without its password, raised to the caller."""
    study = _mixed_study(postgres_url, tmp_path)
    reader = open_reader(postgres_url)
    assert reader.dialect == "postgresql" and reader._connection is not None
    backend_pid = reader._connection.raw.info.backend_pid

    class CutAfterFirstBatch(io.StringIO):
        """Output that cuts the reader's server connection once the header and a batch
        have been written."""

        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            if self.writes == 2:
                with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as c:
                    c.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
            return super().write(text)

    out = CutAfterFirstBatch()
    try:
        with pytest.raises(StorageError) as failed:
            summary.write_trials_csv(reader, "mixed", out, batch_size=2)
    finally:
        reader.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("number,state,")
    numbers = [int(line.split(",")[0]) for line in lines[1:]]
    assert numbers == list(range(len(numbers))) and 2 <= len(numbers) < len(study.trials)
    assert str(failed.value).startswith(f"cannot connect to storage {mask_url(postgres_url)}: ")
    assert "\n" not in str(failed.value)
    assert not _threads()
