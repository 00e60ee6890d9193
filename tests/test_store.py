"""The store on SQLite and PostgreSQL: migrations, events, batching."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from winchester.store import (
    SchemaError,
    Store,
    create_engine,
    current_revision,
    downgrade,
    head_revision,
    metadata,
    migration_sql,
    upgrade,
)
from winchester.store._store import IngestItem


@pytest.fixture
def store(migrated_url):
    store = Store.from_url(migrated_url, indexed_traits={"instance_id", "memory_mb", "launched_at"})
    yield store
    store.close()


def event(message_id: str, **traits):
    return {"message_id": message_id, "event_type": traits.pop("event_type", "compute.instance.update"),
            "timestamp": traits.pop("timestamp", datetime(2014, 8, 1, 1, 0)), **traits}


def test_migrations_create_the_schema_the_models_describe(migrated_url):
    """After `upgrade head` the database matches the SQLAlchemy models exactly."""
    engine = create_engine(migrated_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
        assert differences == []
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_migrations_go_down_and_up_again(migrated_url):
    """Downgrading to base removes every table; upgrading again recreates them."""
    engine = create_engine(migrated_url)
    try:
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert {"events", "streams", "stream_events", "archive", "dead_letters", "clocks"} <= set(
            sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migration_0003_keeps_memberships_and_traits(database_url):
    """Dropping the membership and trait foreign keys keeps every row and index, both ways."""
    engine = create_engine(database_url)
    try:
        upgrade(engine, "0002")
        with engine.begin() as connection:
            for statement in (
                    "INSERT INTO event_types (id, name) VALUES (1, 'compute.instance.update')",
                    "INSERT INTO events (id, message_id, event_type_id, generated, traits) "
                    "VALUES (1, 'm1', 1, '2014-08-01 01:00:00', '{}')",
                    "INSERT INTO event_traits (event_id, name, type, t_string) "
                    "VALUES (1, 'instance_id', 1, 'i-1')",
                    "INSERT INTO streams (id, trigger_name, state, dist_key, distinguishing_traits, "
                    "first_event, last_event, expire_timestamp, fire_counts, event_count, "
                    "created_at, updated_at) VALUES (7, 't', 'active', 'k', '{}', "
                    "'2014-08-01 01:00:00', '2014-08-01 01:00:00', '2014-08-02 01:00:00', '[]', 1, "
                    "'2014-08-01 01:00:00', '2014-08-01 01:00:00')",
                    "INSERT INTO stream_events (stream_id, event_id) VALUES (7, 1)"):
                connection.exec_driver_sql(statement)
        upgrade(engine)
        inspector = sa.inspect(engine)
        assert inspector.get_foreign_keys("stream_events") == []
        assert inspector.get_foreign_keys("event_traits") == []
        assert {index["name"] for index in inspector.get_indexes("event_traits")} >= {
            "ix_event_traits_name_t_string", "ix_event_traits_name_t_datetime"}
        with engine.begin() as connection:
            assert connection.exec_driver_sql(
                "SELECT stream_id, event_id FROM stream_events").all() == [(7, 1)]
            assert connection.exec_driver_sql("SELECT t_string FROM event_traits").scalar() == "i-1"
            # A membership left behind by a stream deleted outside Winchester ...
            connection.exec_driver_sql("INSERT INTO stream_events (stream_id, event_id) VALUES (8, 1)")
        # ... cannot stop a downgrade: the constraints come back without it.
        downgrade(engine, "0002")
        assert len(sa.inspect(engine).get_foreign_keys("stream_events")) == 2
        with engine.connect() as connection:
            assert connection.exec_driver_sql(
                "SELECT stream_id, event_id FROM stream_events").all() == [(7, 1)]
    finally:
        engine.dispose()


@pytest.mark.parametrize("url, fragment", [
    ("sqlite:///x.db", "CREATE TABLE streams"),
    ("postgresql+psycopg://u@h/db", "CREATE TABLE streams"),
])
def test_upgrade_sql_is_printed_without_a_database(url, fragment):
    """`--sql` renders the migration as SQL for the database kind without connecting."""
    sql = migration_sql(url, "head")
    assert fragment in sql and "CREATE UNIQUE INDEX" not in sql or "uq_streams_open_key" in sql


def test_unmigrated_database_is_refused_with_the_command_to_run(database_url):
    """A store without the schema refuses to start and says which command creates it."""
    store = Store.from_url(database_url)
    try:
        with pytest.raises(SchemaError, match=r"winchester db upgrade -c etc/w.yaml"):
            store.check_schema("etc/w.yaml")
    finally:
        store.close()


def test_unknown_schema_revision_is_refused(migrated_url):
    """A schema written by a newer version (unknown revision) is refused, naming the revision."""
    engine = create_engine(migrated_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff99'"))
        with pytest.raises(SchemaError, match="ffff99"):
            Store(engine).check_schema()
    finally:
        engine.dispose()


def test_events_round_trip_with_types(store):
    """A stored event comes back with every trait's type intact."""
    original = event("m-1", instance_id="i-1", memory_mb=512, ratio=0.5,
                     launched_at=datetime(2014, 7, 31, 23, 0, 0, 123456), state="active")
    store.save_events([original])
    assert store.get_event("m-1") == original
    assert store.get_event("nope") is None


def test_duplicate_message_ids_change_nothing(store):
    """A message_id already stored (or repeated in the batch) is reported as a duplicate."""
    first = store.save_events([event("m-1", state="a"), event("m-1", state="b")])
    assert first.saved == 1 and first.duplicates == ["m-1"]
    again = store.save_events([event("m-1", state="c"), event("m-2")])
    assert again.saved == 1 and again.duplicates == ["m-1"]
    assert store.get_event("m-1")["state"] == "a"
    assert store.count_events() == 2


def test_indexed_traits_are_queryable_by_typed_value(store):
    """Indexed traits can be looked up by name and typed value."""
    store.save_events([
        event("m-1", instance_id="i-1", memory_mb=512, launched_at=datetime(2014, 8, 1)),
        event("m-2", instance_id="i-2", memory_mb=1024),
        event("m-3", instance_id="i-1", memory_mb="512"),
    ])
    assert store.find_events_by_trait("instance_id", "i-1") == ["m-1", "m-3"]
    assert store.find_events_by_trait("memory_mb", 512) == ["m-1"]
    assert store.find_events_by_trait("launched_at", datetime(2014, 8, 1)) == ["m-1"]


def test_long_text_traits_are_kept_but_not_indexed(store):
    """A text trait longer than the index width is stored with the event, not in the index."""
    long_value = "x" * 1000
    store.save_events([event("m-1", instance_id=long_value)])
    assert store.get_event("m-1")["instance_id"] == long_value
    assert store.find_events_by_trait("instance_id", long_value) == []


def test_dead_letters_are_kept(store):
    """Rejected input is stored with its reason, whatever its form."""
    store.save_dead_letters([
        {"source": "test:1", "reason": "not_json", "detail": "bad", "body": b"\xff\xfe"},
        {"source": "test:2", "reason": "no_event_type", "body": {"a": 1}},
    ], datetime(2014, 8, 1))
    assert store.count_dead_letters() == 2


class _Trigger:
    """A minimal trigger policy: expires a day after the last event, ready after 2 events."""

    name = "t"
    fire_delay = 0

    def expire_time(self, first, last, now=None):
        return last + timedelta(days=1)

    def is_ready(self, counts):
        return counts[0] >= 2


class _Match:
    def __init__(self, key):
        self.trigger = _Trigger()
        self.key = key
        self.distinguishing = {"instance_id": key}
        self.fire_increments = (1,)


def _count_statements(engine):
    counter = {"n": 0}

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(*_args):
        counter["n"] += 1

    return counter


def test_a_batch_costs_a_constant_number_of_statements(store):
    """Ingesting 20 or 600 events into 5 or 300 streams takes the same number of statements."""
    now = datetime(2014, 8, 1, 2)

    def batch(prefix, size, streams):
        return [IngestItem(event(f"{prefix}-{i}", instance_id=f"i-{i % streams}"),
                           [_Match(f"{prefix}-key-{i % streams}")], now) for i in range(size)]

    store.ingest(batch("warm", 2, 1))  # event type cache
    counter = _count_statements(store.engine)
    store.ingest(batch("small", 20, 5))
    small = counter["n"]
    counter["n"] = 0
    store.ingest(batch("large", 600, 300))
    assert counter["n"] == small
    assert small <= 10


def test_ingest_groups_events_into_streams_and_tracks_progress(store):
    """Events with the same key share one open stream; counts, first/last and readiness follow."""
    now = datetime(2014, 8, 1, 2)
    result = store.ingest([
        IngestItem(event("m-1", timestamp=datetime(2014, 8, 1, 1)), [_Match("k1")], now),
        IngestItem(event("m-2", timestamp=datetime(2014, 8, 1, 0, 30)), [_Match("k1")], now),
        IngestItem(event("m-3", timestamp=datetime(2014, 8, 1, 1, 30)), [_Match("k2")], now),
    ])
    assert result.new_streams["t"] == 2 and result.ready["t"] == 1 and result.matched["t"] == 3
    [k1, k2] = store.list_streams()
    assert k1.event_count == 2 and k1.fire_counts == (2,) and k1.fire_timestamp == now
    assert k1.first_event == datetime(2014, 8, 1, 0, 30) and k1.last_event == datetime(2014, 8, 1, 1)
    assert k1.expire_timestamp == datetime(2014, 8, 2, 1)
    assert k2.fire_timestamp is None and k1.is_open and k2.is_open
    assert [e["message_id"] for e in store.stream_events(k1.id)] == ["m-2", "m-1"]


def test_an_expired_open_stream_is_closed_and_a_new_one_started(store):
    """An event arriving after its stream's expiry time starts a new stream; the old one closes."""
    store.ingest([IngestItem(event("m-1"), [_Match("k")], datetime(2014, 8, 1, 2))])
    late = datetime(2014, 8, 3)
    result = store.ingest([IngestItem(event("m-2", timestamp=late), [_Match("k")], late)])
    assert result.closed_expired == 1 and result.new_streams["t"] == 1
    old, new = store.list_streams()
    assert not old.is_open and old.state == "active" and old.event_count == 1
    assert new.is_open and new.event_count == 1


def test_a_failed_batch_leaves_no_stale_event_type(store, monkeypatch):
    """A batch that fails after meeting a new event type does not poison the next batch."""
    from winchester.store import StoreError

    original = Store._ingest

    def failing(self, connection, items, type_ids, *rest):
        original(self, connection, items, type_ids, *rest)
        raise StoreError("simulated failure after the writes, before commit")

    monkeypatch.setattr(Store, "_ingest", failing)
    with pytest.raises(StoreError):
        store.ingest([IngestItem(event("m-1", event_type="brand.new.type"), [], datetime(2014, 8, 1))])
    monkeypatch.setattr(Store, "_ingest", original)
    result = store.ingest([IngestItem(event("m-1", event_type="brand.new.type"), [], datetime(2014, 8, 1))])
    assert result.saved == 1
    assert store.get_event("m-1")["event_type"] == "brand.new.type"


def _migrated_sqlite_file(tmp_path) -> tuple[str, str]:
    """(url, path) of a migrated SQLite file database."""
    path = tmp_path / "winchester.db"
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    return url, str(path)


def _events_in_the_database_file_alone(path, tmp_path) -> int:
    """Events a copy of the main database file holds without its WAL (what was checkpointed)."""
    import shutil
    import sqlite3

    copy = tmp_path / "file-only.db"
    shutil.copyfile(path, copy)
    with sqlite3.connect(copy) as connection:
        return connection.execute("SELECT count(*) FROM events").fetchone()[0]


def test_committed_batches_are_copied_into_the_sqlite_file_off_the_writers_thread(tmp_path):
    """The WAL is checkpointed by the store's own thread, not left to a commit of the writer."""
    url, path = _migrated_sqlite_file(tmp_path)
    store = Store.from_url(url)
    try:
        batch = [IngestItem(event(f"m-{n}"), [], datetime(2014, 8, 1)) for n in range(200)]
        # Far fewer pages than the writers' own checkpoint waits for.
        assert store.ingest(batch).saved == 200
        store._checkpointer.close()  # waits for the checkpoint under way
        assert _events_in_the_database_file_alone(path, tmp_path) == 200
    finally:
        store.close()


def test_the_checkpoint_thread_ends_when_writes_stop(tmp_path):
    import threading
    import time

    from winchester.store._engine import WalCheckpointer

    _, path = _migrated_sqlite_file(tmp_path)
    checkpointer = WalCheckpointer(path, idle_seconds=0.05)
    checkpointer.nudge()
    assert any(t.name == "winchester-wal-checkpoint" for t in threading.enumerate())
    deadline = time.monotonic() + 30
    while any(t.name == "winchester-wal-checkpoint" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the idle checkpoint thread never ended"
        time.sleep(0.01)
    checkpointer.nudge()  # and a later commit starts it again
    assert any(t.name == "winchester-wal-checkpoint" for t in threading.enumerate())
    checkpointer.close()
    assert not any(t.name == "winchester-wal-checkpoint" for t in threading.enumerate())


def test_a_constraint_failure_inside_a_bulk_statement_stores_nothing_of_the_batch(store, monkeypatch):
    """The rows a failing multi-row statement wrote before failing go with its transaction."""
    from winchester.store import StoreError

    writer = type(store._bulk)
    original = writer.insert_members

    def duplicated(self, connection, rows):
        # The first row again at the end: the statement fails after writing the others.
        original(self, connection, [*rows, rows[0]])

    monkeypatch.setattr(writer, "insert_members", duplicated)
    now = datetime(2014, 8, 1, 2)
    batch = [IngestItem(event(f"m-{n}"), [_Match(f"k-{n % 3}")], now) for n in range(30)]
    with pytest.raises(StoreError):
        store.ingest(batch)
    assert store.get_event("m-0") is None and store.list_streams() == []
    monkeypatch.setattr(writer, "insert_members", original)
    assert store.ingest(batch).saved == 30
    assert sum(stream.event_count for stream in store.list_streams()) == 30


def test_writers_sharing_a_turn_wait_for_it_on_sqlite(tmp_path):
    """A write waits while another process holds the shared turn, and goes once it is released."""
    import multiprocessing
    import threading

    url, _ = _migrated_sqlite_file(tmp_path)
    store = Store.from_url(url)
    turn = multiprocessing.get_context("spawn").Lock()
    store.take_turns(turn)
    written = threading.Event()

    def write():
        store.ingest([IngestItem(event("m-1"), [], datetime(2014, 8, 1))])
        written.set()

    try:
        turn.acquire()
        writer = threading.Thread(target=write)
        writer.start()
        assert not written.wait(0.5), "wrote while another process had the turn"
        turn.release()
        assert written.wait(30)
        writer.join()
        assert store.get_event("m-1") is not None
        assert turn.acquire(timeout=0)  # given back after the write
        turn.release()
    finally:
        store.close()


def test_a_turn_never_given_back_delays_a_write_but_does_not_stop_it(tmp_path, monkeypatch):
    import multiprocessing

    from winchester.store import _store

    monkeypatch.setattr(_store, "TURN_WAIT", timedelta(seconds=0.2))
    url, _ = _migrated_sqlite_file(tmp_path)
    store = Store.from_url(url)
    turn = multiprocessing.get_context("spawn").Lock()
    turn.acquire()  # as by a process that died holding it
    store.take_turns(turn)
    try:
        assert store.ingest([IngestItem(event("m-1"), [], datetime(2014, 8, 1))]).saved == 1
    finally:
        store.close()


@pytest.mark.postgres
def test_postgresql_writers_do_not_take_turns(postgres_url):
    """PostgreSQL locks rows: a held turn does not hold its writes back."""
    import multiprocessing

    engine = create_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    store = Store.from_url(postgres_url)
    turn = multiprocessing.get_context("spawn").Lock()
    turn.acquire()
    store.take_turns(turn)
    try:
        assert store.ingest([IngestItem(event("m-1"), [], datetime(2014, 8, 1))]).saved == 1
    finally:
        store.close()


def test_reading_the_archive_never_skips_a_batch_that_commits_after_a_later_one(postgres_url):
    """PostgreSQL gives archive ids out at insert, not at commit: a persistor batch holding id 1
    commits after another's id 2. A read that began in between (a replay, an export) waits for it
    instead of paging past id 2 and missing id 1 for good."""
    import threading

    engine = create_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    store = Store.from_url(postgres_url)
    try:
        now = datetime(2026, 12, 4, 12, 0)
        # Two persistors' batches, written as the store writes them. The later one began
        # first (the older transaction id) and commits first; the slow one holds id 1.
        fast, slow = store.engine.connect(), store.engine.connect()
        fast_batch, slow_batch = fast.begin(), slow.begin()
        fast.exec_driver_sql("SELECT pg_current_xact_id()")
        store._bulk.insert_archive(slow, [(now, "first-in", None, None, None, "archived", None, b"{}")])
        store._bulk.insert_archive(fast, [(now, "second-in", None, None, None, "archived", None, b"{}")])
        fast_batch.commit()
        fast.close()
        read: list[str] = []
        reader = threading.Thread(target=lambda: read.extend(
            row.message_id for row in store.iter_archive()))
        reader.start()
        reader.join(0.5)  # the reader is waiting for the slow batch (or, unfixed, done without it)
        slow_batch.commit()
        slow.close()
        reader.join(30)
        assert not reader.is_alive()
        assert read == ["first-in", "second-in"]
    finally:
        store.close()


def test_a_trait_indexed_after_events_were_stored_still_finds_them_and_can_be_filled_in(migrated_url):
    """Adding a trait to indexed_traits later: filters on it find the events stored before (from
    their JSON) as well as the new ones (typed rows), and index_traits fills in the old rows."""
    from winchester.store import EventQuery, TraitFilter

    before = Store.from_url(migrated_url, indexed_traits={"instance_id"})
    before.save_events([event("old", flavor="m1.small"), event("other", flavor="m1.large")])
    before.close()
    query = EventQuery(traits=(TraitFilter("flavor", "m1.small"),))
    after = Store.from_url(migrated_url, indexed_traits={"instance_id", "flavor"})
    try:
        after.save_events([event("new", flavor="m1.small")])
        assert sorted(found.event["message_id"] for found in after.query_events(query)) == ["new", "old"]
        assert after.count_events_matching(query) == 2
        assert after.index_coverage() == {"flavor": 2}  # the events stored before it, ids 1 and 2
        assert sorted(after.find_events_by_trait("flavor", "m1.small")) == ["new"]  # typed rows alone
        progress: list[tuple[str, int, int]] = []
        assert after.index_traits(batch=1, progress=lambda *step: progress.append(step)) == {"flavor": 2}
        assert progress == [("flavor", 1, 3), ("flavor", 2, 3), ("flavor", 3, 3)]  # to the newest
        assert sorted(after.find_events_by_trait("flavor", "m1.small")) == ["new", "old"]
        assert after.index_coverage() == {}
        assert after.index_traits() == {}  # nothing left to do
    finally:
        after.close()
    again = Store.from_url(migrated_url, indexed_traits={"instance_id", "flavor"})
    try:
        assert again.index_coverage() == {}
        assert sorted(found.event["message_id"] for found in again.query_events(query)) == ["new", "old"]
    finally:
        again.close()

    # Taken out of the configuration, then put back: what was stored in between is found too.
    without = Store.from_url(migrated_url, indexed_traits={"instance_id"})
    try:
        without.save_events([event("between", flavor="m1.small")])
    finally:
        without.close()
    back = Store.from_url(migrated_url, indexed_traits={"instance_id", "flavor"})
    try:
        assert back.index_coverage() == {"flavor": 4}
        assert back.count_events_matching(query) == 3
        assert back.index_traits() == {"flavor": 1}
        assert back.count_events_matching(query) == 3
    finally:
        back.close()


def test_a_read_only_user_finds_events_by_a_trait_no_writer_recorded_yet(postgres_url):
    """An API with only SELECT rights cannot record a newly indexed trait: it reads every event's
    JSON for it rather than trusting index rows the events may not have."""
    from winchester.store import EventQuery, TraitFilter

    engine = create_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    writer = Store.from_url(postgres_url, indexed_traits={"instance_id"})
    try:
        writer.save_events([event("old", flavor="m1.small")])
        schema = writer.engine.url.query["options"].split("search_path=")[1]
        role = f"reader_{schema}"
        with writer.engine.begin() as connection:
            connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
            connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
            connection.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    finally:
        writer.close()
    reader = Store.from_url(postgres_url.replace("postgres@", f"{role}@"),
                            indexed_traits={"instance_id", "flavor"})
    try:
        found = reader.query_events(EventQuery(traits=(TraitFilter("flavor", "m1.small"),)))
        assert [f.event["message_id"] for f in found] == ["old"]
    finally:
        reader.close()
        cleanup = Store.from_url(postgres_url)
        with cleanup.engine.begin() as connection:
            connection.exec_driver_sql(f'DROP OWNED BY "{role}"')
            connection.exec_driver_sql(f'DROP ROLE "{role}"')
        cleanup.close()


def test_recently_failed_streams_come_latest_failure_first_not_highest_id_first(store):
    """An old stream that failed again a moment ago heads the list, ahead of newer streams that
    failed earlier; streams in other states are not in it."""
    from winchester.store._schema import streams

    now = datetime(2014, 8, 1, 2)
    store.ingest([IngestItem(event(f"m-{n}"), [_Match(f"k{n}")], now) for n in range(4)])
    failed_at = {1: ("error", 5), 2: ("expire_error", 1), 3: ("error", 3), 4: ("active", 9)}
    with store.engine.begin() as connection:
        for stream_id, (state, minute) in failed_at.items():
            connection.execute(streams.update().where(streams.c.id == stream_id).values(
                state=state, updated_at=now + timedelta(minutes=minute)))
    assert [s.id for s in store.recently_failed_streams(10)] == [1, 3, 2]
    assert [s.id for s in store.recently_failed_streams(2)] == [1, 3]
