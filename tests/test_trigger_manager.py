"""winchester.trigger_manager: the original's TriggerManager(config) still takes notifications."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import orjson
import pytest

from winchester.store import Store, create_engine, upgrade
from winchester.trigger_manager import TriggerManager

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "etc" / "samples" / "nova-notifications.jsonl.gz"


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    shutil.copytree(ROOT / "etc", tmp_path / "etc")
    url = f"sqlite:///{tmp_path / 'winchester.db'}"
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    monkeypatch.setenv("WINCHESTER_DATABASE_URL", url)
    return tmp_path / "etc" / "winchester.yaml"


def test_a_trigger_manager_built_from_the_configuration_stores_and_groups(config):
    """TriggerManager(path).add_notification(s): events stored, streams opened, bad input
    dead-lettered; what the original's integrations did, against the configured database."""
    lines = gzip.decompress(SAMPLES.read_bytes()).splitlines()
    with TriggerManager(str(config)) as manager:
        first = manager.add_notification(orjson.loads(lines[0]))
        rest = manager.add_notifications(lines[1:] + [b"not json"])
        assert first.stored.saved == 1 and rest.stored.saved == len(lines) - 1
        assert [r.reason for r in rest.rejected] == ["not_json"]
        assert manager.stats.new_streams["usage_audit"] > 0
        url = manager.settings.database_url
    store = Store.from_url(url)
    try:
        assert store.count_events() == len(lines)
        assert store.list_streams()
        assert store.count_dead_letters() == 1
    finally:
        store.close()


def test_the_originals_db_argument_is_refused_saying_why(config):
    with pytest.raises(TypeError, match="opened from database.url"):
        TriggerManager(str(config), db=object())
