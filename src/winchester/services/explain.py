"""Explain: why a stream is where it is, and what an event matched.

The two questions operators ask all day — "what happened to this
instance?" and "why didn't this stream fire?" — answered from the store and
the trigger definitions, for ``winchester explain``, the API and the
dashboard. Everything is returned as JSON-ready dicts (datetimes as ISO
strings) so the three front ends show the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from winchester.events import Event, encode_value
from winchester.store import Store
from winchester.timex import TimeRange
from winchester.triggers import Diagnosis, TriggerDefinition, TriggerSet

# Non-matching events shown per unmet fire criterion.
CLOSEST = 5
# Stream membership is decided once, when the event arrives; nothing records a
# purge or a trigger's history, so every way to end up here is named.
NO_STREAM_HOLDS_IT = ("matched, but no stream holds it now: the stream it joined was purged when it "
                      "completed (purge_completed_streams) or was deleted, or the event was stored "
                      "before this trigger matched it (triggers see events only as they arrive)")


class NotFound(LookupError):
    """No such stream or event."""


@dataclass(frozen=True)
class _Scored:
    diagnosis: Diagnosis
    event: Event


def explain_stream(store: Store, triggers: TriggerSet, stream_id: int, now: datetime) -> dict[str, Any]:
    """The stream, its trigger, its history, expiry, and each fire criterion's progress.

    ``now`` is the clock's reading (event time when that is the clock).
    """
    stream = store.get_stream(stream_id)
    if stream is None:
        raise NotFound(f"stream {stream_id} does not exist (a purged stream is gone once it "
                       "completed)")
    trigger = triggers.by_name.get(stream.trigger_name)
    events = store.stream_events(stream_id)
    history = [{"at": _iso(entry.at), "state": entry.state, "previous_state": entry.previous_state,
                "actor": entry.actor, "detail": entry.detail}
               for entry in store.stream_history(stream_id)]
    history.insert(0, {"at": _iso(stream.created_at), "state": "active", "previous_state": None,
                       "actor": "ingest", "detail": "created by its first event"})
    criteria = _fire_progress(trigger, stream.fire_counts, events) if trigger is not None else []
    until_expiry = (stream.expire_timestamp - now).total_seconds()
    report = {
        "stream": _stream_dict(stream),
        "trigger": _trigger_summary(trigger, stream.trigger_name),
        "now": _iso(now),
        "history": history,
        "expiry": {"at": _iso(stream.expire_timestamp), "seconds_from_now": until_expiry,
                   "in": _duration(until_expiry)},
        "fire": {"ready": stream.fire_timestamp is not None, "fire_at": _iso(stream.fire_timestamp),
                 "criteria": criteria},
        "events": [_event_summary(event) for event in events],
        "error": stream.last_error if stream.state.endswith("error") else None,
    }
    report["verdict"] = _verdict(stream, trigger, criteria, until_expiry,
                                 store.late_event_grace.total_seconds())
    return report


def explain_event(store: Store, triggers: TriggerSet, message_id: str) -> dict[str, Any]:
    """Which triggers the event matched (and joined which streams), and why not the others."""
    found = store.event_by_message_id(message_id)
    if found is None:
        raise NotFound(f"no event with message_id {message_id!r} is stored")
    event = found.event
    streams = {stream.trigger_name: stream for stream in
               (store.get_stream(i) for i in store.streams_holding(found.id)) if stream is not None}
    verdicts = []
    for trigger in triggers:
        match = trigger.match(event)
        criteria = [{"index": index, "description": criterion.describe(),
                     **_diagnosis_dict(criterion.diagnose(event))}
                    for index, criterion in enumerate(trigger.match_criteria)]
        entry: dict[str, Any] = {"trigger": trigger.name, "matched": match is not None,
                                 "match_criteria": criteria}
        if match is not None:
            entry["distinguishing_traits"] = {k: _plain(v) for k, v in match.distinguishing.items()}
            entry["fire_criteria"] = [
                {"index": index, "description": criterion.describe(), "needed": criterion.number,
                 "counts": bool(counted), **_diagnosis_dict(criterion.diagnose(event))}
                for index, (criterion, counted) in enumerate(
                    zip(trigger.fire_criteria, match.fire_increments, strict=True))]
            stream = streams.get(trigger.name)
            entry["stream"] = None if stream is None else {"id": stream.id, "state": stream.state}
            entry["reason"] = "matched" if stream is not None else NO_STREAM_HOLDS_IT
        else:
            entry["reason"] = trigger.explain(event)
        verdicts.append(entry)
    return {"event": {key: _plain(value) for key, value in event.items()},
            "triggers": verdicts}


# -- pieces ----------------------------------------------------------------------------------


def _fire_progress(trigger: TriggerDefinition, counts: tuple[int, ...],
                   events: list[Event]) -> list[dict[str, Any]]:
    progress = []
    current = len(counts) == len(trigger.fire_criteria)
    for index, criterion in enumerate(trigger.fire_criteria):
        scored = [_Scored(criterion.diagnose(event), event) for event in events]
        matching = [s.event["message_id"] for s in scored if s.diagnosis.matches]
        counted = counts[index] if current else len(matching)
        entry: dict[str, Any] = {
            "index": index, "description": criterion.describe(), "needed": criterion.number,
            "counted": counted, "met": counted >= criterion.number, "matching_events": matching,
            "closest": [],
        }
        if counted < criterion.number:
            misses = sorted((s for s in scored if not s.diagnosis.matches),
                            key=lambda s: (-s.diagnosis.passed, s.event["timestamp"]))
            entry["closest"] = [{**_event_summary(s.event), **_diagnosis_dict(s.diagnosis)}
                                for s in misses[:CLOSEST]]
        progress.append(entry)
    return progress


def _verdict(stream: Any, trigger: TriggerDefinition | None, criteria: list[dict[str, Any]],
             until_expiry: float, grace: float = 0.0) -> str:
    state = stream.state
    if trigger is None:
        return (f"its trigger {stream.trigger_name!r} is not in the trigger definitions: a worker "
                "will put it in error; restore the trigger or delete the stream")
    if state == "completed":
        how = "fired" if stream.fire_timestamp is not None else "expired"
        return f"{how} and completed"
    if state in ("error", "expire_error"):
        return (f"its {'fire' if state == 'error' else 'expire'} pipeline failed: "
                f"{stream.last_error}; `winchester streams reset {stream.id}` retries it")
    if state in ("firing", "expiring"):
        return f"{state}: worker {stream.claimed_by} is running its pipeline"
    if state in ("retry_fire", "retry_expire"):
        return f"waiting for a worker to {state[6:]} it again (it was reset after an error)"
    if stream.fire_timestamp is not None:
        return f"ready: fires at {_iso(stream.fire_timestamp)} (or as soon as a worker gets to it)"
    unmet = [c for c in criteria if not c["met"]]
    if not criteria:
        waiting = "its trigger has no fire criteria: it can only expire"
    else:
        waiting = "waiting for " + "; ".join(
            f"fire criterion #{c['index']} ({c['description']}): {c['counted']} of {c['needed']}"
            for c in unmet)
    if until_expiry > 0:
        when = f"expires in {_duration(until_expiry)}"
    elif -until_expiry < grace:
        # Workers wait out late_event_grace; meanwhile it takes events stamped before its expiry.
        when = (f"expiry passed {_duration(-until_expiry)} ago; within late_event_grace it still "
                f"takes late events, and a worker expires it in {_duration(grace + until_expiry)}")
    else:
        when = f"expiry passed {_duration(-until_expiry)} ago: a worker expires it next"
    return f"{waiting}; {when}"


def _diagnosis_dict(diagnosis: Diagnosis) -> dict[str, Any]:
    return {"matches": diagnosis.matches, "failed": diagnosis.failed, "detail": diagnosis.detail,
            "checks_passed": diagnosis.passed, "checks": diagnosis.checks}


def _trigger_summary(trigger: TriggerDefinition | None, name: str) -> dict[str, Any]:
    if trigger is None:
        return {"name": name, "defined": False}
    return {
        "name": trigger.name, "defined": True, "expiration": trigger.expiration.text,
        "fire_pipeline": trigger.fire_pipeline, "expire_pipeline": trigger.expire_pipeline,
        "fire_delay": trigger.fire_delay, "distinguished_by": list(trigger.distinguished_by),
        "match_criteria": [c.describe() for c in trigger.match_criteria],
        "fire_criteria": [{"description": c.describe(), "number": c.number}
                          for c in trigger.fire_criteria],
    }


def trigger_definition(trigger: TriggerDefinition) -> dict[str, Any]:
    """A trigger as JSON (API, dashboard)."""
    summary = _trigger_summary(trigger, trigger.name)
    summary.pop("defined")
    summary["debug_level"] = trigger.debug_level
    summary["distinguished_by"] = [
        {name: trigger.distinguished_by_expressions[name].text}
        if name in trigger.distinguished_by_expressions else name
        for name in trigger.distinguished_by]
    return summary


def _stream_dict(stream: Any) -> dict[str, Any]:
    return {
        "id": stream.id, "trigger": stream.trigger_name, "state": stream.state,
        "distinguishing_traits": {k: _plain(v) for k, v in stream.distinguishing_traits.items()},
        "first_event": _iso(stream.first_event), "last_event": _iso(stream.last_event),
        "event_count": stream.event_count, "fire_counts": list(stream.fire_counts),
        "fire_timestamp": _iso(stream.fire_timestamp),
        "expire_timestamp": _iso(stream.expire_timestamp), "accepting_events": stream.is_open,
        "created_at": _iso(stream.created_at), "updated_at": _iso(stream.updated_at),
        "attempts": stream.attempts, "claimed_by": stream.claimed_by,
        "claim_expires": _iso(stream.claim_expires),
    }


def _event_summary(event: Event) -> dict[str, Any]:
    return {"message_id": event["message_id"], "event_type": event["event_type"],
            "timestamp": _iso(event["timestamp"])}


def _plain(value: Any) -> Any:
    if isinstance(value, TimeRange):
        return {"begin": _iso(value.begin), "end": _iso(value.end)}
    if isinstance(value, datetime):
        return _iso(value)
    return encode_value(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _duration(seconds: float) -> str:
    left = timedelta(seconds=abs(int(seconds)))
    days, rest = divmod(int(left.total_seconds()), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "",
             f"{minutes}m" if minutes else "", f"{secs}s" if secs and not days else ""]
    return " ".join(p for p in parts if p) or "0s"


__all__ = ["CLOSEST", "NotFound", "explain_event", "explain_stream", "trigger_definition"]
