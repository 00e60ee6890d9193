"""The dashboard: server-rendered pages over the store and the trigger definitions.

Pages (Jinja2 with autoescaping on; a little CSS, a few lines of JS, no build
step, nothing fetched from elsewhere):

* ``/`` — streams by state and by trigger, ingest and firing per minute over
  the last hour (inline SVG drawn here), the most recent error streams;
* ``/streams`` — the streams list with the filters of ``GET /v1/streams``;
* ``/streams/{id}`` — a stream, its events with their traits, and explain:
  history, expiry, each fire criterion's progress, the closest events that
  did not count and why, the recorded error; reset and delete buttons for
  whoever may write;
* ``/triggers/{name}`` — a trigger's definition and counters;
* ``/events`` — event search (the filters of ``GET /v1/events``), each event
  linking to ``/events/{message_id}``, what it matched and why not;
* ``/signin`` and ``/signout`` — with API tokens configured, a token is kept
  in the ``winchester_token`` cookie (HttpOnly, SameSite=Strict), which the
  API's token check accepts.

Reads go through ``read_guard``, writes (HTML form POSTs that redirect back)
through ``write_guard``. Every form POST must also come from the dashboard's
own pages: its ``Origin`` (or, without one, its ``Referer``) must name this
server (the ``Host`` it was sent to), and ``Sec-Fetch-Site``, when the browser
sends it, must say ``same-origin``. Together with the SameSite=Strict cookie
(a cross-site request does not carry it) that stops cross-site request
forgery even when no tokens are configured, which is exactly when the cookie
cannot help. Behind a reverse proxy, pass the original ``Host`` through.

Every problem is a page: a bad filter 400 naming the parameter, an unknown
stream, event or trigger 404, an unavailable database 503, a missing sign-in
401 (the sign-in page), a foreign form 403.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from winchester import __version__
from winchester.api._app import TOKEN_COOKIE
from winchester.api._params import BadParameter, mark_of
from winchester.api._queries import event_query_from, stream_query_from
from winchester.api._v1 import event_body, stream_body
from winchester.clock import utc_now
from winchester.events import IDENTIFIER_MAX_LENGTH
from winchester.services.explain import NotFound, explain_event, explain_stream, trigger_definition
from winchester.store import RESET_STATES, STREAM_STATES, EventQuery, StoreError, StreamQuery
from winchester.timex import TimeRange

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

# Rows per page when the request names no limit (the API's default, 200, is a lot to read).
PAGE_LIMIT = 50
# Events shown on a stream's timeline (explain still looks at every one).
TIMELINE_LIMIT = 1000
# Error streams on the overview, and streams on a trigger's page.
RECENT = 10
CHART_MINUTES = 60
# A sign-in form is a token and a path: anything much bigger is not one.
MAX_FORM_BYTES = 8192
MAX_ID = 2**63 - 1
TYPED_PREFIXES = ("int:", "float:", "datetime:", "string:")
# Not news on a timeline: every notification has its own.
UNREMARKABLE = frozenset({"message_id", "event_type", "timestamp", "request_id"})
CHANGES_SHOWN = 4
# Shown beside an event in search results, when it has them (the rest are a click away).
SALIENT = ("instance_id", "state", "host", "tenant_id")

INGEST_SERIES = (("stored", "events stored"), ("duplicates", "duplicates"),
                 ("rejected", "rejected"))
FIRING_SERIES = (("fired", "fired"), ("expired", "expired"), ("errors", "pipeline errors"))

NOTICES = {
    "reset": ("ok", "Reset: the stream will be retried by the next worker that looks."),
    "not-in-error": ("warn", "The stream is not in an error state: there was nothing to reset."),
    "running": ("warn", "A worker is running this stream's pipeline: try again once it is done."),
    "deleted": ("ok", "Stream deleted (its events are kept)."),
    "signed-in": ("ok", "Signed in."),
    "signed-out": ("ok", "Signed out."),
}

# The pages are self-contained: the stylesheet and script come from here, the
# chart is inline SVG; forms post only here, and nobody frames the buttons.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; script-src 'self'; "
                                "img-src 'self' data:; form-action 'self'; base-uri 'none'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def build_dashboard(store: Any, triggers: Any, *, now: Callable[[], datetime],
                    read_guard: Callable[..., None], write_guard: Callable[..., None],
                    tokens: tuple[str, ...] = (),
                    counters: Callable[[], Mapping[str, Mapping[str, int]]] | None = None
                    ) -> APIRouter:
    """The dashboard's routes over ``store`` and ``triggers`` (see the module docstring).

    ``now`` is the clock explain uses; ``tokens`` are the API tokens (empty:
    no sign-in, and anyone may reset and delete, as with the API);
    ``counters`` gives this process's per-trigger counters.
    """
    templates = _environment()
    allowed = [token.encode() for token in tokens]
    static = _static_files()

    def token_is_valid(token: str) -> bool:
        # Every token is compared (in constant time each), as the API's check does.
        matches = [hmac.compare_digest(token.encode(), t) for t in allowed]
        return any(matches)

    def signed_in(request: Request) -> bool:
        return bool(allowed) and token_is_valid(request.cookies.get(TOKEN_COOKIE, ""))

    def render(request: Request, template: str, status_code: int = 200,
               headers: Mapping[str, str] | None = None, **context: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        is_signed_in = signed_in(request)
        notice = NOTICES.get(request.query_params.get("notice", ""))
        values: dict[str, Any] = {
            "base": base, "auth": bool(allowed), "signed_in": is_signed_in,
            "can_write": not allowed or is_signed_in, "version": __version__,
            "now": None, "section": None, "notice": notice, "here": _here(request),
            "href": lambda path, **params: _href(base, path, params),
        }
        values.update(context)
        body = templates.get_template(template).render(**values)
        return HTMLResponse(body, status_code, headers={**SECURITY_HEADERS, **(headers or {})})

    def problem_page(request: Request, status: int, message: str,
                     headers: Mapping[str, str] | None = None) -> HTMLResponse:
        if status == 401:
            return signin_page(request, 401, message, headers=headers)
        titles = {400: "Bad request", 403: "Refused", 404: "Not found", 405: "Not allowed",
                  409: "Conflict", 503: "Database unavailable"}
        return render(request, "problem.html", status, headers=headers, status=status,
                      title=titles.get(status, "Problem"), message=message)

    def signin_page(request: Request, status: int = 200, message: str | None = None,
                    next_path: str | None = None, headers: Mapping[str, str] | None = None
                    ) -> HTMLResponse:
        if next_path is None:
            if request.url.path.endswith("/signin"):
                next_path = _safe_next(request.query_params.get("next"))
            elif request.method == "GET":
                next_path = _here(request)
            else:  # a refused form: back to the page it was on, not to the POST-only address
                next_path = _referring_path(request)
        return render(request, "signin.html", status, headers=headers, section="signin",
                      message=message, next_path=next_path)

    class PageRoute(APIRoute):
        """Routes whose every failure (guards included) is answered with a page."""

        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = super().get_route_handler()

            async def page(request: Request) -> Response:
                try:
                    return await handler(request)
                except HTTPException as exc:
                    return problem_page(request, exc.status_code, str(exc.detail),
                                        headers=exc.headers)
                except RequestValidationError:
                    return problem_page(request, 400, "the request's parameters are not valid")
                except BadParameter as exc:
                    return problem_page(request, 400, str(exc))
                except (StoreError, SQLAlchemyError) as exc:
                    logger.warning("dashboard: the database is unavailable: %s", exc)
                    return problem_page(request, 503, f"the database is unavailable: {exc}")

            return page

    router = APIRouter(route_class=PageRoute, include_in_schema=False)
    reads = [Depends(read_guard)]
    writes = [Depends(same_origin), Depends(write_guard)]

    # -- overview --------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse, dependencies=reads)
    def overview(request: Request) -> HTMLResponse:
        moment = now()
        by_trigger = store.count_streams_by_trigger_and_state()
        by_state: Counter[str] = Counter()
        for states in by_trigger.values():
            by_state.update(states)
        defined = [trigger.name for trigger in triggers]
        names = defined + sorted(set(by_trigger) - set(defined))
        errors = store.recently_failed_streams(RECENT)
        wall = _wall_now(store)
        minutes, activity = _activity(store, wall)
        charts = [_chart("Ingest: events per minute", INGEST_SERIES, activity, minutes),
                  _chart("Streams fired, expired and failed per minute", FIRING_SERIES,
                         activity, minutes)]
        created = sum(count for (_, kind, _), count in activity.items()
                      if kind == "streams_created")
        return render(request, "overview.html", section="overview", now=moment,
                      states=STREAM_STATES, by_state=by_state, total=sum(by_state.values()),
                      triggers=[{"name": name, "defined": name in triggers.by_name,
                                 "states": by_trigger.get(name, {}),
                                 "total": sum(by_trigger.get(name, {}).values())}
                                for name in names],
                      errors=[_stream_row(s, moment) for s in errors], charts=charts,
                      streams_created=created, wall=wall)

    # -- streams ---------------------------------------------------------------------------

    @router.get("/streams", response_class=HTMLResponse, dependencies=reads)
    def streams_page(request: Request, state: str | None = None,
                     trigger_name: str | None = None, name: str | None = None,
                     distinguishing_traits: str | None = None, older_than: str | None = None,
                     younger_than: str | None = None, mark: str | None = None,
                     limit: str | None = None) -> HTMLResponse:
        form = {"state": state or "", "trigger_name": trigger_name or name or "",
                "distinguishing_traits": distinguishing_traits or "",
                "older_than": older_than or "", "younger_than": younger_than or "",
                "limit": limit or "", "mark": mark or ""}
        context: dict[str, Any] = {"section": "streams", "form": form, "states": STREAM_STATES,
                                   "trigger_names": [t.name for t in triggers], "error": None,
                                   "rows": [], "count": None, "next_mark": None}
        try:
            query = _stream_query(form)
        except BadParameter as exc:
            context.update(error={"parameter": exc.parameter, "message": str(exc)})
            return render(request, "streams.html", 400, **context)
        moment = now()
        found = store.query_streams(query)
        context.update(
            now=moment, rows=[_stream_row(s, moment) for s in found],
            count=store.count_streams_matching(StreamQuery(
                older_than=query.older_than, younger_than=query.younger_than, state=query.state,
                trigger_name=query.trigger_name, distinguishing=query.distinguishing)),
            next_mark=(mark_of(found[-1].id, query.ascending)
                       if query.limit is not None and len(found) == query.limit else None),
            api={k: v for k, v in form.items() if k != "limit"} | {"limit": str(query.limit)})
        notice_id = request.query_params.get("deleted", "")
        context["deleted"] = int(notice_id) if notice_id.isdigit() and len(notice_id) < 20 else None
        return render(request, "streams.html", **context)

    @router.get("/streams/{stream_id}", response_class=HTMLResponse, dependencies=reads)
    def stream_page(request: Request, stream_id: str) -> HTMLResponse:
        number = _stream_id(stream_id)
        moment = now()
        try:
            report = explain_stream(store, triggers, number, moment)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        stream = store.get_stream(number)
        if stream is None:  # deleted between the two reads
            raise HTTPException(404, f"stream {number} does not exist")
        events = store.stream_events(number)
        counting: dict[str, list[int]] = {}
        for criterion in report["fire"]["criteria"]:
            for message_id in criterion["matching_events"]:
                counting.setdefault(message_id, []).append(criterion["index"])
        timeline = []
        previous: Mapping[str, Any] | None = None
        for event in events[:TIMELINE_LIMIT]:
            changed = _changes(previous, event)
            timeline.append({"event": event, "traits": _traits(event),
                             "counts_for": counting.get(event["message_id"], []),
                             "changed": changed[:CHANGES_SHOWN],
                             "more_changes": max(0, len(changed) - CHANGES_SHOWN)})
            previous = event
        raw = orjson.dumps(stream_body(stream, mark=False), option=orjson.OPT_INDENT_2).decode()
        return render(request, "stream.html", section="streams", now=moment, stream=stream,
                      row=_stream_row(stream, moment), report=report, timeline=timeline,
                      hidden_events=max(0, len(events) - TIMELINE_LIMIT), raw=raw,
                      trigger_defined=stream.trigger_name in triggers.by_name,
                      resettable=stream.state in RESET_STATES,
                      deletable=stream.state not in ("firing", "expiring"),
                      links=_trait_links(stream.distinguishing_traits))

    @router.post("/streams/{stream_id}/reset", dependencies=writes)
    def reset_stream(request: Request, stream_id: str) -> Response:
        number = _stream_id(stream_id)
        stream = store.get_stream(number)
        if stream is None:
            raise HTTPException(404, f"stream {number} does not exist")
        moved = store.reset_streams([number], now(), actor="dashboard")
        notice = "reset" if number in moved else "not-in-error"
        return _redirect(request, f"/streams/{number}", notice=notice)

    @router.post("/streams/{stream_id}/delete", dependencies=writes)
    def delete_stream(request: Request, stream_id: str) -> Response:
        number = _stream_id(stream_id)
        problem = store.delete_stream(number)
        if problem == "missing":
            raise HTTPException(404, f"stream {number} does not exist")
        if problem == "running":
            return _redirect(request, f"/streams/{number}", notice="running")
        return _redirect(request, "/streams", notice="deleted", deleted=str(number))

    # -- triggers --------------------------------------------------------------------------

    @router.get("/triggers/{name:path}", response_class=HTMLResponse, dependencies=reads)
    def trigger_page(request: Request, name: str) -> HTMLResponse:
        trigger = triggers.by_name.get(name)
        if trigger is None:
            raise HTTPException(404, f"there is no trigger named {name!r} in the trigger "
                                     "definitions")
        moment = now()
        by_state = store.count_streams_by_trigger_and_state().get(name, {})
        live = dict((counters() if counters is not None else {}).get(name, {}))
        wall = _wall_now(store)
        minutes, activity = _activity(store, wall, trigger=name)
        recent = store.query_streams(StreamQuery(trigger_name=name, limit=RECENT))
        definition = trigger_definition(trigger)
        return render(request, "trigger.html", section="triggers", now=moment, name=name,
                      definition=definition, states=STREAM_STATES, by_state=by_state,
                      total=sum(by_state.values()), counters=live,
                      trigger_chart=_chart("Streams fired, expired and failed per minute",
                                   FIRING_SERIES, activity, minutes),
                      hour={kind: sum(c for (_, k, _), c in activity.items() if k == kind)
                            for kind in ("streams_created", "fired", "expired", "errors")},
                      recent=[_stream_row(s, moment) for s in recent],
                      definition_json=orjson.dumps(definition,
                                                   option=orjson.OPT_INDENT_2).decode())

    # -- events ----------------------------------------------------------------------------

    @router.get("/events", response_class=HTMLResponse, dependencies=reads)
    def events_page(request: Request, event_name: str | None = None, traits: str | None = None,
                    from_datetime: str | None = None, to_datetime: str | None = None,
                    mark: str | None = None, limit: str | None = None) -> HTMLResponse:
        form = {"event_name": event_name or "", "traits": traits or "",
                "from_datetime": from_datetime or "", "to_datetime": to_datetime or "",
                "limit": limit or "", "mark": mark or ""}
        context: dict[str, Any] = {"section": "events", "form": form, "error": None, "rows": [],
                                   "next_mark": None}
        try:
            query = _event_query(form)
        except BadParameter as exc:
            context.update(error={"parameter": exc.parameter, "message": str(exc)})
            return render(request, "events.html", 400, **context)
        found = store.query_events(query)
        context.update(
            now=now(), rows=[{"id": f.id, "event": f.event, "traits": _traits(f.event),
                              "salient": _salient(f.event)} for f in found],
            next_mark=(mark_of(found[-1].id, query.ascending)
                       if query.limit is not None and len(found) == query.limit else None),
            api={k: v for k, v in form.items() if k != "limit"} | {"limit": str(query.limit)})
        return render(request, "events.html", **context)

    @router.get("/events/{message_id:path}", response_class=HTMLResponse, dependencies=reads)
    def event_page(request: Request, message_id: str) -> HTMLResponse:
        if not message_id or len(message_id) > IDENTIFIER_MAX_LENGTH or "\x00" in message_id:
            raise HTTPException(404, f"no event with message_id {message_id[:80]!r} is stored")
        try:
            report = explain_event(store, triggers, message_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        found = store.event_by_message_id(message_id)
        if found is None:
            raise HTTPException(404, f"no event with message_id {message_id!r} is stored")
        raw = orjson.dumps(event_body(found.event), option=orjson.OPT_INDENT_2).decode()
        return render(request, "event.html", section="events", now=now(), event=found.event,
                      traits=_traits(found.event), report=report, raw=raw)

    # -- signing in ------------------------------------------------------------------------

    @router.get("/signin", response_class=HTMLResponse)
    def signin_form(request: Request) -> HTMLResponse:
        return signin_page(request)

    @router.post("/signin", response_class=HTMLResponse, dependencies=[Depends(same_origin)])
    async def signin(request: Request) -> Response:
        fields = await _form(request)
        next_path = _safe_next(fields.get("next"))
        if not allowed:
            return _redirect(request, next_path)
        token = fields.get("token", "").strip()
        if not token or not token_is_valid(token):
            return signin_page(request, 401, "That is not one of this server's API tokens.",
                               next_path=next_path)
        response = _redirect(request, next_path, notice="signed-in")
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    @router.post("/signout", dependencies=[Depends(same_origin)])
    def signout(request: Request) -> Response:
        response = _redirect(request, "/", notice="signed-out")
        response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    # -- the stylesheet and script ----------------------------------------------------------

    @router.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, f"no static file {name[:80]!r}")
        body, media_type = static[name]
        return Response(body, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=300",
                                 "X-Content-Type-Options": "nosniff"})

    return router


# -- request checks ----------------------------------------------------------------------------


def same_origin(request: Request) -> None:
    """Refuse (403) a form POST that does not come from this server's own pages (CSRF)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise HTTPException(403, f"this form must be sent from the dashboard's own pages "
                                 f"(the browser says the request is {site[:40]!r})")
    origin = request.headers.get("origin")
    source = origin if origin is not None else request.headers.get("referer")
    if not source:
        raise HTTPException(403, "this form must be sent from the dashboard's own pages (the "
                                 "request has neither an Origin nor a Referer header)")
    host = request.headers.get("host", "")
    try:
        netloc = urlsplit(source).netloc
    except ValueError:
        netloc = ""
    if source == "null" or not host or netloc.lower() != host.lower():
        raise HTTPException(403, f"this form must be sent from the dashboard's own pages, not "
                                 f"from {source[:200]!r}")


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form's fields (the first value of each); too big a body is refused."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise HTTPException(413, "that form is far bigger than a sign-in form")
        chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", "replace")
    return {key: values[0] for key, values in parse_qs(text, keep_blank_values=True).items()
            if values}


def _safe_next(path: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site."""
    if (not path or not path.startswith("/") or path.startswith(("//", "/\\"))
            or any(ord(c) < 32 for c in path) or len(path) > 2000):
        return "/"
    return path


def _here(request: Request) -> str:
    """This page's path and query (without one-off notices), to come back to after signing in."""
    path = request.url.path
    query = urlencode([(k, v) for k, v in request.query_params.multi_items()
                       if k not in ("notice", "deleted")])
    return _safe_next(path + ("?" + query if query else ""))


def _referring_path(request: Request) -> str:
    """The path of the dashboard page a form was sent from, or / when that is not known."""
    referer = request.headers.get("referer", "")
    try:
        parts = urlsplit(referer)
    except ValueError:
        return "/"
    if parts.netloc.lower() != request.headers.get("host", "").lower():
        return "/"
    return _safe_next(parts.path + ("?" + parts.query if parts.query else ""))


def _redirect(request: Request, path: str, **params: str) -> RedirectResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    target, hash_, fragment = (base + path).partition("#")
    if params:
        target += ("&" if "?" in target else "?") + urlencode(params)
    return RedirectResponse(target + hash_ + fragment, status_code=303, headers=SECURITY_HEADERS)


def _stream_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not 1 <= int(text) <= MAX_ID:
        raise HTTPException(404, f"there is no stream {text[:40]!r} (stream ids are whole "
                                 "numbers from 1)")
    return int(text)


def _stream_query(form: Mapping[str, str]) -> StreamQuery:
    """The filters of GET /v1/streams, checked as the API checks them."""
    return stream_query_from(form, default_limit=PAGE_LIMIT)


def _event_query(form: Mapping[str, str]) -> EventQuery:
    """The filters of GET /v1/events, checked as the API checks them."""
    return event_query_from(form, default_limit=PAGE_LIMIT)


# -- what the pages show -------------------------------------------------------------------------


def _environment() -> Environment:
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(when=_when, value=_value, seconds=_seconds, segment=_segment,
                               duration=_duration)
    return environment


def _static_files() -> dict[str, tuple[bytes, str]]:
    return {path.name: (path.read_bytes(), STATIC_TYPES.get(path.suffix, "text/plain"))
            for path in sorted(STATIC.iterdir()) if path.is_file() and path.suffix in STATIC_TYPES}


def _href(base: str, path: str, params: Mapping[str, Any]) -> str:
    query = urlencode({key: value for key, value in params.items()
                       if value is not None and value != ""})
    return base + path + ("?" + query if query else "")


def _segment(value: Any) -> str:
    """A value as one URL path segment."""
    return quote(str(value), safe="")


def _when(value: Any) -> str:
    """A datetime (or explain's ISO text) to the second, as the pages show times (UTC)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def _seconds(value: Any) -> str:
    """Full precision, for a title attribute."""
    if isinstance(value, str):
        return value.replace("T", " ", 1)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return "" if value is None else str(value)


def _value(value: Any) -> str:
    """A trait or distinguishing value as text."""
    if isinstance(value, dict) and set(value) == {"begin", "end"}:  # explain's time ranges
        try:
            value = TimeRange(datetime.fromisoformat(value["begin"]),
                              datetime.fromisoformat(value["end"]))
        except (TypeError, ValueError):
            return f"{value['begin']} to {value['end']}"
    if isinstance(value, TimeRange):
        begin, end = value.begin, value.end
        if end - begin == timedelta(days=1) and begin.time() == datetime.min.time():
            return f"{begin.date().isoformat()} (day)"
        return f"{begin.isoformat(sep=' ')} to {end.isoformat(sep=' ')}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if value is None:
        return "—"
    return str(value)


def _duration(seconds: float) -> str:
    left = abs(int(seconds))
    days, rest = divmod(left, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "",
             f"{minutes}m" if minutes and not days else "",
             f"{secs}s" if secs and not days and not hours else ""]
    return " ".join(p for p in parts if p) or "0s"


def _relative(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return ""
    seconds = (moment - now).total_seconds()
    return f"in {_duration(seconds)}" if seconds >= 0 else f"{_duration(seconds)} ago"


def _traits(event: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(name, shown value, type) of an event's traits, by name."""
    return [(name, _value(value), type(value).__name__)
            for name, value in sorted(event.items())
            if name not in ("message_id", "event_type", "timestamp")]


def _changes(previous: Mapping[str, Any] | None, event: Mapping[str, Any]
             ) -> list[tuple[str, str, str]]:
    """(name, before, after) of the traits an event changed from the one before it."""
    if previous is None:
        return []
    return [(name, _value(previous.get(name)), _value(event.get(name)))
            for name in sorted(set(previous) | set(event))
            if name not in UNREMARKABLE and previous.get(name) != event.get(name)
            and name in event]


def _salient(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(name, _value(event[name])) for name in SALIENT if name in event]


def _filter_text(name: str, value: Any) -> str | None:
    """``name:value;`` as the traits filters read it back exactly, or None when it cannot be."""
    if (not name or name != name.strip() or ":" in name or ";" in name or "\x00" in name
            or len(name) > IDENTIFIER_MAX_LENGTH):
        return None
    if isinstance(value, TimeRange):
        typed = "datetime:" + value.begin.isoformat()
    elif isinstance(value, datetime):
        typed = "datetime:" + value.isoformat()
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int):
        typed = f"int:{value}"
    elif isinstance(value, float):
        typed = f"float:{value!r}"
    elif isinstance(value, str):
        if not value or value != value.strip() or ";" in value or "\x00" in value:
            return None
        typed = "string:" + value if value.startswith(TYPED_PREFIXES) else value
    else:
        return None
    # The trailing ; makes ; the separator, so a , inside the value stays in it.
    return f"{name}:{typed};"


def _trait_links(traits: Mapping[str, Any]) -> list[dict[str, Any]]:
    links = []
    for name, value in traits.items():
        text = _filter_text(name, value)
        links.append({"name": name, "value": _value(value), "filter": text,
                      "events": text is not None and not isinstance(value, TimeRange)})
    return links


def _stream_row(stream: Any, now: datetime) -> dict[str, Any]:
    return {"stream": stream,
            "traits": [(name, _value(value))
                       for name, value in stream.distinguishing_traits.items()],
            "expires_in": _relative(stream.expire_timestamp, now),
            "error": (stream.last_error or "") if stream.state.endswith("error") else ""}


# -- the activity chart ------------------------------------------------------------------------


def _wall_now(store: Any) -> datetime:
    """Real time as the store counts activity by it (naive UTC)."""
    clock = getattr(store, "wall_clock", None)
    return clock.now() if clock is not None else utc_now()


def _activity(store: Any, wall: datetime, trigger: str | None = None
              ) -> tuple[list[datetime], dict[tuple[datetime, str, str], int]]:
    """The last hour's minutes, and (minute, kind, trigger) -> count from every process."""
    last = wall.replace(second=0, microsecond=0)
    minutes = [last - timedelta(minutes=CHART_MINUTES - 1 - i) for i in range(CHART_MINUTES)]
    counts: dict[tuple[datetime, str, str], int] = {}
    for bucket, kind, name, count in store.activity_since(minutes[0]):
        if trigger is not None and name != trigger:
            continue
        key = (bucket, kind, name)
        counts[key] = counts.get(key, 0) + int(count or 0)
    return minutes, counts


@dataclass
class Chart:
    """Stacked per-minute bars as SVG geometry (the template draws it)."""

    title: str
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    legend: list[dict[str, Any]]
    bars: list[dict[str, Any]] = field(default_factory=list)
    yticks: list[dict[str, Any]] = field(default_factory=list)
    xticks: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0

    @property
    def label(self) -> str:
        return f"{self.title}, last hour: " + ", ".join(
            f"{entry['label']} {entry['total']}" for entry in self.legend)


def _chart(title: str, series: Sequence[tuple[str, str]],
           counts: Mapping[tuple[datetime, str, str], int], minutes: Sequence[datetime],
           width: int = 720, height: int = 170) -> Chart:
    per_minute: dict[datetime, Counter[str]] = {minute: Counter() for minute in minutes}
    for (bucket, kind, _), count in counts.items():
        if bucket in per_minute:
            per_minute[bucket][kind] += count
    kinds = [kind for kind, _ in series]
    totals = {kind: sum(per_minute[m][kind] for m in minutes) for kind in kinds}
    chart = Chart(title, width, height, left=44.0, right=width - 8.0, top=10.0,
                  bottom=height - 24.0,
                  legend=[{"kind": kind, "label": label, "total": totals[kind]}
                          for kind, label in series],
                  total=sum(totals.values()))
    peak = max((sum(per_minute[m][k] for k in kinds) for m in minutes), default=0)
    scale = _nice_ceiling(peak)
    plot_height = chart.bottom - chart.top
    slot = (chart.right - chart.left) / len(minutes)
    for index, minute in enumerate(minutes):
        x = chart.left + index * slot
        y = chart.bottom
        segments = []
        for kind in kinds:
            count = per_minute[minute][kind]
            if not count:
                continue
            h = plot_height * count / scale
            y -= h
            segments.append({"kind": kind, "y": round(y, 2), "h": round(max(h, 0.5), 2)})
        label = minute.strftime("%H:%M") + " UTC: " + ", ".join(
            f"{per_minute[minute][kind]} {name}" for kind, name in series)
        chart.bars.append({"x": round(x + slot * 0.1, 2), "w": round(slot * 0.8, 2),
                           "segments": segments, "label": label,
                           "slot_x": round(x, 2), "slot_w": round(slot, 2)})
    for fraction in (0, 0.5, 1):
        value = scale * fraction
        chart.yticks.append({"y": round(chart.bottom - plot_height * fraction, 2),
                             "label": f"{value:g}" if value == int(value) else f"{value:.1f}"})
    ticks = [index for index, minute in enumerate(minutes) if minute.minute % 15 == 0]
    if not ticks or len(minutes) - 1 - ticks[-1] >= 5:  # the current minute, unless crowded
        ticks.append(len(minutes) - 1)
    for index in ticks:
        last = index == len(minutes) - 1  # ends at the plot's edge rather than past it
        x = chart.right if last else chart.left + (index + 0.5) * slot
        chart.xticks.append({"x": round(x, 2), "anchor": "end" if last else "middle",
                             "label": minutes[index].strftime("%H:%M")})
    return chart


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power
