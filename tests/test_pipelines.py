"""Loading pipelines.yaml, resolving handlers, and running a pipeline (no database)."""

from __future__ import annotations

import importlib
import shutil
import sys
import textwrap
import uuid
from datetime import datetime, timedelta
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from click.testing import CliRunner

import winchester.pipelines._registry as registry_module
from winchester._yaml import parse_yaml
from winchester.cli import main
from winchester.distill import import_object
from winchester.errors import ConfigError
from winchester.pipelines import (
    BUILTIN_HANDLERS,
    ENTRY_POINT_GROUP,
    LEGACY_PATHS,
    Handler,
    HandlerRegistry,
    Pipeline,
    PipelineEntry,
    UnknownHandler,
    load_pipelines,
)

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"
T0 = datetime(2024, 3, 1, 12, 0)

AVAILABLE_BUILTINS = sorted(BUILTIN_HANDLERS)

# Minimal valid params of each built-in (publish/notabene/webhook only connect on commit).
BUILTIN_PARAMS = {
    "logger": {},
    "usage": {},
    "publish": {"exchange": "nova"},
    "notabene": {"exchange": "nova", "queue_name": "monitor.info"},
    "webhook": {"url": "http://127.0.0.1:9/hook"},
}


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def etc_copy(tmp_path) -> Path:
    """A writable copy of the example configuration."""
    shutil.copytree(ETC, tmp_path / "etc")
    return tmp_path / "etc"


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A directory on sys.path where tests write handler modules (all undone afterwards)."""
    directory = tmp_path / "handlers"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))  # also restores sys.path (import_object appends)
    written: list[str] = []

    def write(source: str, name: str | None = None) -> str:
        name = name or f"wh_{uuid.uuid4().hex[:12]}"
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def load(text: str, configured=None, file_name: str = "pipelines.yaml"):
    data, _ = parse_yaml(textwrap.dedent(text), file_name)
    return load_pipelines(data, file_name, HandlerRegistry(configured))


def problems_of(text: str, configured=None, file_name: str = "pipelines.yaml"):
    with pytest.raises(ConfigError) as caught:
        load(text, configured, file_name)
    return caught.value.problems


def event(message_id: str, minutes: int = 0, **traits):
    return {"message_id": message_id, "event_type": "compute.instance.update",
            "timestamp": T0 + timedelta(minutes=minutes), "instance_id": "i-1", **traits}


ENV = {"stream_id": 7, "stream_name": "t", "distinguishing_traits": {}, "reason": "fire",
       "pipeline": "p"}


RECORDING = """
    calls = []

    class Recording:
        label = "rec"

        def __init__(self, label="rec"):
            self.label = label

        def handle_events(self, events, env):
            calls.append((self.label, "handle"))
            return events

        def commit(self):
            calls.append((self.label, "commit"))

        def rollback(self):
            calls.append((self.label, "rollback"))
"""


# -- resolving names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", AVAILABLE_BUILTINS)
def test_builtin_names_resolve_to_handler_classes(name):
    """Each built-in name resolves, with no configuration, to its class, which builds a handler."""
    factory = HandlerRegistry().resolve(name)
    assert factory is import_object(BUILTIN_HANDLERS[name])
    handler = factory(**BUILTIN_PARAMS[name])
    assert all(callable(getattr(handler, m)) for m in ("handle_events", "commit", "rollback"))


def test_every_builtin_loads_in_one_pipeline():
    """A pipeline listing every built-in (with its required params) loads, in order."""
    entries = "\n".join(
        f"  - name: {name}\n    params: {BUILTIN_PARAMS[name] or '{}'}" for name in AVAILABLE_BUILTINS)
    pipelines = load("all:\n" + entries.replace("'", '"') + "\n")
    assert [entry.name for entry in pipelines["all"].entries] == AVAILABLE_BUILTINS


def test_registry_names_list_builtins_and_configured():
    """names() lists the built-ins and the configured handlers."""
    names = HandlerRegistry({"mine": "somewhere:Thing"}).names()
    assert set(BUILTIN_HANDLERS) <= set(names) and "mine" in names


@pytest.mark.parametrize("path", sorted(LEGACY_PATHS))
def test_original_handler_paths_resolve_to_the_builtins(path):
    """`winchester.pipeline_handler:XHandler` under pipeline_handlers resolves to our built-in."""
    builtin = LEGACY_PATHS[path]
    factory = HandlerRegistry({"legacy": path}).resolve("legacy")
    assert factory is import_object(BUILTIN_HANDLERS[builtin])


def test_the_original_module_still_exports_the_handler_classes():
    """`from winchester.pipeline_handler import UsageHandler` gives the built-in classes."""
    import winchester.pipeline_handler as original

    assert original.LoggingHandler is import_object(BUILTIN_HANDLERS["logger"])
    assert original.UsageHandler is import_object(BUILTIN_HANDLERS["usage"])
    assert original.PipelineHandlerBase is Handler
    with pytest.raises(AttributeError):
        original.NoSuchHandler  # noqa: B018


def _stacktach_pipelines(real_data, winchester_yaml: str, pipelines_yaml: str):
    settings, _ = parse_yaml((real_data / "stacktach" / winchester_yaml).read_text(), winchester_yaml)
    path = real_data / "stacktach" / pipelines_yaml
    data, _ = parse_yaml(path.read_text(), str(path))
    return load_pipelines(data, str(path), HandlerRegistry(settings["pipeline_handlers"]))


def test_stacktach_winchester_etc_configuration_loads(real_data):
    """StackTach's winchester/etc pipelines load with its pipeline_handlers (legacy logger path)."""
    pipelines = _stacktach_pipelines(real_data, "other_configs/winchester_etc_winchester.yaml",
                                     "other_configs/winchester_etc_pipelines.yaml")
    assert sorted(pipelines) == ["test_expire_pipeline", "test_pipeline"]
    logger_class = import_object(BUILTIN_HANDLERS["logger"])
    assert all(entry.factory is logger_class for p in pipelines.values() for entry in p.entries)


def test_stacktach_sandbox_configuration_with_notabene_loads(real_data):
    """The sandbox's pipelines (logger, usage, notabene with the original's params) load unchanged."""
    pipelines = _stacktach_pipelines(real_data, "other_configs/sandbox_winchester.yaml",
                                     "sandbox_winchester/pipelines.yaml")
    assert sorted(pipelines) == ["test_expire_pipeline", "test_fire_pipeline"]
    for pipeline in pipelines.values():
        assert [entry.name for entry in pipeline.entries] == ["logger", "usage", "notabene"]
        notabene = pipeline.entries[2]
        assert notabene.factory is import_object(BUILTIN_HANDLERS["notabene"])
        assert notabene.params["queue_name"] == "monitor.info"
        assert notabene.params["env_keys"] == ["usage_notifications"]
        assert notabene.build().handle_events([], {}) == []


# -- handlers written by users -----------------------------------------------------------------


def test_a_handler_written_for_the_original_works(module_dir):
    """A PipelineHandlerBase subclass with __init__(**kw), handle_events/commit/rollback runs."""
    name = module_dir("""
        from winchester.pipeline_handler import PipelineHandlerBase

        calls = []

        class CountingHandler(PipelineHandlerBase):
            def __init__(self, **kw):
                super(CountingHandler, self).__init__(**kw)
                self.prefix = kw.get("prefix", "n")
                self.pending = None

            def handle_events(self, events, env):
                env[self.prefix + "_count"] = len(events)
                self.pending = len(events)
                return events

            def commit(self):
                calls.append(("commit", self.pending))

            def rollback(self):
                calls.append(("rollback", self.pending))
    """)
    pipelines = load("""
        p:
          - name: counter
            params: {prefix: seen, anything: goes}
    """, {"counter": f"{name}:CountingHandler"})
    env = dict(ENV)
    result = pipelines["p"].run([event("a"), event("b", 1)], env)
    assert result.ok and [e["message_id"] for e in result.events] == ["a", "b"]
    assert env["seen_count"] == 2
    assert sys.modules[name].calls == [("commit", 2)]


def test_a_duck_typed_handler_without_a_base_class_works(module_dir):
    """Any class with handle_events, commit and rollback is a handler."""
    name = module_dir(RECORDING)
    pipelines = load("p: [rec]\n", {"rec": f"{name}:Recording"})
    assert pipelines["p"].run([event("a")], dict(ENV)).ok
    assert sys.modules[name].calls == [("rec", "handle"), ("rec", "commit")]


def test_directory_pipe_module_path_resolves(tmp_path, monkeypatch):
    """`directory|module:Class` (the original's simport form) imports from that directory."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_object appends the directory
    directory = tmp_path / "plugins"
    directory.mkdir()
    name = f"wh_{uuid.uuid4().hex[:12]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(RECORDING))
    importlib.invalidate_caches()
    try:
        pipelines = load("p: [piped]\n", {"piped": f"{directory}|{name}:Recording"})
        assert pipelines["p"].entries[0].factory.__module__ == name
        assert pipelines["p"].run([event("a")], dict(ENV)).ok
    finally:
        sys.modules.pop(name, None)


def test_module_class_path_on_sys_path_resolves(module_dir):
    """`module:Class` of a module on sys.path resolves, with params passed to the constructor."""
    name = module_dir(RECORDING)
    pipelines = load("""
        p:
          - name: rec
            params: {label: first}
    """, {"rec": f"{name}:Recording"})
    [entry] = pipelines["p"].entries
    assert entry.params == {"label": "first"} and entry.build().label == "first"


def test_configured_name_overrides_a_builtin(module_dir):
    """A pipeline_handlers entry named like a built-in wins over the built-in."""
    name = module_dir(RECORDING)
    factory = HandlerRegistry({"logger": f"{name}:Recording"}).resolve("logger")
    assert factory.__module__ == name


# -- errors ------------------------------------------------------------------------------------


def test_unknown_handler_name_is_reported_with_a_suggestion():
    """An unknown name: the file, line, pipeline, 1-based entry and name, and 'did you mean'."""
    [problem] = problems_of("""
        p:
          - logger
          - loger
    """)
    assert problem.file == "pipelines.yaml" and problem.line == 4
    assert problem.where == "pipeline 'p' > entry #2 (loger)"
    assert "unknown handler 'loger'; did you mean 'logger'?" in problem.message
    assert "pipelines.yaml:4:" in str(problem)


def test_registry_resolve_raises_unknown_handler():
    """resolve() of an unknown name raises UnknownHandler listing the known names."""
    with pytest.raises(UnknownHandler, match="known: .*logger"):
        HandlerRegistry().resolve("zzz_nothing_like_it")


def test_unimportable_module_path_is_reported():
    """A configured path whose module does not import is a problem naming the handler."""
    [problem] = problems_of("p: [logger, broken]\n",
                            {"broken": "no_such_module_for_winchester_tests:Thing"})
    assert problem.where == "pipeline 'p' > entry #2 (broken)" and problem.line == 1
    assert "cannot load handler 'broken': ModuleNotFoundError" in problem.message


def test_missing_class_in_an_existing_module_is_reported(module_dir):
    """A path naming a class the module lacks is a problem naming the handler."""
    name = module_dir(RECORDING)
    [problem] = problems_of("p: [missing]\n", {"missing": f"{name}:NotThere"})
    assert "cannot load handler 'missing'" in problem.message and "NotThere" in problem.message


def test_a_param_the_handler_does_not_accept_lists_the_accepted_ones():
    """An unexpected param is reported at the params line, listing the accepted params."""
    [problem] = problems_of("""
        p:
          - name: logger
            params:
              colour: red
    """)
    assert problem.where == "pipeline 'p' > entry #1 (logger) > params" and problem.line == 4
    assert "unexpected keyword argument 'colour'" in problem.message
    assert "(accepted: level)" in problem.message


def test_a_constructor_refusing_a_value_is_reported(module_dir):
    """A handler raising ValueError for a bad value is reported with its message, at start."""
    name = module_dir("""
        class Sized:
            def __init__(self, size=1):
                if size < 1:
                    raise ValueError(f"size must be at least 1, not {size}")

            def handle_events(self, events, env):
                return events

            def commit(self):
                pass

            def rollback(self):
                pass
    """)
    [problem] = problems_of("""
        p:
          - name: sized
            params: {size: 0}
    """, {"sized": f"{name}:Sized"})
    assert problem.where == "pipeline 'p' > entry #1 (sized) > params" and problem.line == 4
    assert problem.message == "ValueError: size must be at least 1, not 0"


def test_a_builtin_refusing_a_bad_value_is_reported():
    """The logger built-in refuses an unknown level at load time."""
    [problem] = problems_of("p:\n  - name: logger\n    params: {level: loud}\n")
    assert problem.where == "pipeline 'p' > entry #1 (logger) > params"
    assert problem.message.startswith("ValueError:") and "'loud'" in problem.message


@pytest.mark.parametrize("entry", ["3", "[logger]", "{params: {level: info}}", "''"])
def test_an_entry_that_is_not_a_name_or_mapping_is_reported(entry):
    """An entry that is not a handler name or {name, params} is a problem at its line."""
    [problem] = problems_of(f"p:\n  - logger\n  - {entry}\n")
    assert problem.where == "pipeline 'p' > entry #2" and problem.line == 3
    assert "must be a handler name or {name: ..., params: {...}}" in problem.message


def test_params_that_are_not_a_mapping_are_reported():
    """params given as a list is a problem at the params line."""
    [problem] = problems_of("p:\n  - name: logger\n    params: [info]\n")
    assert problem.where.startswith("pipeline 'p' > entry #1") and problem.where.endswith("> params")
    assert problem.line == 3 and "must be a mapping of parameter name to value" in problem.message


def test_an_unknown_key_in_an_entry_is_reported():
    """A key other than name/params in an entry is a problem at that key's line."""
    [problem] = problems_of("p:\n  - name: logger\n    parms: {level: info}\n")
    assert problem.where.startswith("pipeline 'p' > entry #1") and problem.where.endswith("> parms")
    assert problem.line == 3 and "unknown field (an entry has name and params)" in problem.message


def test_entry_structure_problems_name_the_handler_too():
    """Problems with an entry's params or keys name the handler like every other entry problem."""
    bad_params = problems_of("p:\n  - name: logger\n    params: [info]\n")[0]
    unknown_key = problems_of("p:\n  - name: logger\n    parms: {}\n")[0]
    assert bad_params.where == "pipeline 'p' > entry #1 (logger) > params"
    assert unknown_key.where == "pipeline 'p' > entry #1 (logger) > parms"


def test_a_pipeline_that_is_not_a_list_is_reported():
    """A pipeline given as a single name (not a list) is a problem at its line."""
    [problem] = problems_of("ok: [logger]\np: logger\n")
    assert problem.where == "pipeline 'p'" and problem.line == 2
    assert "must be a list of handlers" in problem.message


def test_every_problem_is_reported_at_once():
    """Two bad pipelines give two problems in one ConfigError, in file order."""
    problems = problems_of("""
        first:
          - nosuch
        fine: [logger]
        second:
          - logger
          - name: logger
            params: {verbosity: 3}
    """)
    assert [(p.where, p.line) for p in problems] == [
        ("pipeline 'first' > entry #1 (nosuch)", 3),
        ("pipeline 'second' > entry #2 (logger) > params", 8),
    ]


def test_an_object_without_commit_is_refused(module_dir):
    """A class lacking commit() is not a handler: refused at load, naming what is missing."""
    name = module_dir("""
        class NoCommit:
            def handle_events(self, events, env):
                return events

            def rollback(self):
                pass
    """)
    [problem] = problems_of("p: [half]\n", {"half": f"{name}:NoCommit"})
    assert problem.where == "pipeline 'p' > entry #1 (half) > params"
    assert problem.message == "NoCommit is not a handler: it has no commit()"


def test_a_path_to_something_not_callable_is_refused(module_dir):
    """A configured path naming a non-callable (a constant) is a load problem."""
    name = module_dir("NOT_A_CLASS = 3\n")
    [problem] = problems_of("p: [const]\n", {"const": f"{name}:NOT_A_CLASS"})
    assert "cannot load handler 'const'" in problem.message and "not a class" in problem.message


# -- entry-point plugins -----------------------------------------------------------------------


@pytest.fixture
def plugins(monkeypatch):
    """Replace the installed entry points of the handler group with the given ones."""
    installed: list[EntryPoint] = []

    def fake_entry_points(*, group):
        return [ep for ep in installed if ep.group == group]

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)

    def add(name: str, value: str) -> None:
        installed.append(EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP))

    return add


def test_an_entry_point_plugin_resolves_by_name(module_dir, plugins):
    """A handler installed under the winchester.handlers entry-point group is usable by name."""
    name = module_dir(RECORDING)
    plugins("recorder", f"{name}:Recording")
    registry = HandlerRegistry()
    assert "recorder" in registry.names()
    data, _ = parse_yaml("p: [logger, recorder]\n", "pipelines.yaml")
    pipelines = load_pipelines(data, "pipelines.yaml", registry)
    assert pipelines["p"].run([event("a")], dict(ENV)).ok
    assert sys.modules[name].calls == [("rec", "handle"), ("rec", "commit")]


def test_a_broken_entry_point_plugin_is_a_load_problem(plugins):
    """A plugin whose module cannot be imported is reported when a pipeline uses it."""
    plugins("ghost", "no_such_module_for_winchester_tests:Ghost")
    [problem] = problems_of("p: [ghost]\n")
    assert problem.where == "pipeline 'p' > entry #1 (ghost)"
    assert "cannot load handler 'ghost': ModuleNotFoundError" in problem.message


def test_an_unknown_name_suggests_plugin_names(module_dir, plugins):
    """'did you mean' considers plugin names as well."""
    plugins("recorder", f"{module_dir(RECORDING)}:Recording")
    [problem] = problems_of("p: [recordr]\n")
    assert "did you mean 'recorder'?" in problem.message


def test_builtins_win_over_a_plugin_of_the_same_name(module_dir, plugins):
    """A plugin cannot silently replace a built-in: the documented order is configured, built-in, plugin."""
    plugins("logger", f"{module_dir(RECORDING)}:Recording")
    assert HandlerRegistry().resolve("logger") is import_object(BUILTIN_HANDLERS["logger"])


# -- running -----------------------------------------------------------------------------------


class Journal:
    """Handler classes that record what happened to them."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def handler(self, label, *, handle=None, commit_error=None):
        journal = self

        class Recorded(Handler):
            def handle_events(self, events, env):
                journal.calls.append((label, "handle"))
                return handle(events, env) if handle else events

            def commit(self):
                journal.calls.append((label, "commit"))
                if commit_error:
                    raise commit_error

            def rollback(self):
                journal.calls.append((label, "rollback"))

        return PipelineEntry(label, Recorded, {})


def test_a_constructor_raising_at_run_time_fails_the_run():
    """A handler whose constructor raises: the error says 'constructing' and names the entry."""
    journal = Journal()

    def explode(**_):
        raise RuntimeError("no credentials today")

    pipeline = Pipeline("p", (journal.handler("first"), PipelineEntry("fragile", explode, {})))
    result = pipeline.run([event("a")], dict(ENV))
    assert not result.ok
    assert result.error == ("constructing 'fragile' in pipeline 'p': "
                            "RuntimeError: no credentials today")
    assert journal.calls == [("first", "rollback")]


def test_handle_events_returning_none_fails_the_run():
    """handle_events returning None (forgot `return events`) fails the run; everyone rolls back."""
    journal = Journal()
    pipeline = Pipeline("p", (journal.handler("forgetful", handle=lambda events, env: None),
                              journal.handler("second")))
    result = pipeline.run([event("a")], dict(ENV))
    assert result.error == ("handle_events 'forgetful' in pipeline 'p': "
                            "TypeError: handle_events returned NoneType, not a list")
    assert journal.calls == [("forgetful", "handle"), ("forgetful", "rollback"),
                             ("second", "rollback")]


def test_a_generated_event_with_a_nested_trait_fails_naming_the_key():
    """A generated event with a dict-valued trait fails the run, naming the trait."""
    journal = Journal()

    def generate(events, env):
        return events + [{"message_id": "g-1", "event_type": "audit.verdict", "timestamp": T0,
                          "details": {"nested": True}}]

    result = Pipeline("p", (journal.handler("gen", handle=generate),)).run([event("a")], dict(ENV))
    assert not result.ok
    assert result.error.startswith("checking the events returned by 'gen' in pipeline 'p': EventError")
    assert "'details'" in result.error and "generated event #1" in result.error
    assert journal.calls == [("gen", "handle"), ("gen", "rollback")]
    assert result.generated == []


def test_a_bad_generated_event_is_blamed_on_the_handler_that_added_it():
    """When a later handler passes a bad generated event through, the error names the generator."""
    journal = Journal()

    def generate(events, env):
        return events + [{"message_id": "g-1", "event_type": "audit.verdict", "timestamp": T0,
                          "details": {"nested": True}}]

    pipeline = Pipeline("p", (journal.handler("gen", handle=generate), journal.handler("passthrough")))
    result = pipeline.run([event("a")], dict(ENV))
    assert "'gen'" in result.error and "'passthrough'" not in result.error


def test_commit_errors_are_collected_and_other_handlers_still_commit():
    """A failing commit() is recorded in commit_errors; later handlers still commit; the run is ok."""
    journal = Journal()
    pipeline = Pipeline("p", (journal.handler("a"),
                              journal.handler("b", commit_error=ConnectionError("broker down")),
                              journal.handler("c")))
    result = pipeline.run([event("x")], dict(ENV))
    assert result.ok
    assert result.commit_errors == ["'b': ConnectionError: broker down"]
    assert [call for call in journal.calls if call[1] == "commit"] == [
        ("a", "commit"), ("b", "commit"), ("c", "commit")]


def test_generated_events_are_returned_separately():
    """Events a handler adds come back in result.generated, validated; the stream's own do not."""
    journal = Journal()

    def generate(events, env):
        return events + [{"message_id": "g-1", "event_type": "audit.verdict", "timestamp": T0,
                          "verdict": "ok"}]

    result = Pipeline("p", (journal.handler("gen", handle=generate),)).run([event("a")], dict(ENV))
    assert result.ok
    assert [e["message_id"] for e in result.events] == ["a", "g-1"]
    assert [(e["message_id"], e["verdict"]) for e in result.generated] == [("g-1", "ok")]


def test_each_run_gets_fresh_handler_instances(module_dir):
    """State kept in an instance attribute does not leak from one run to the next."""
    name = module_dir("""
        class Accumulating:
            def __init__(self):
                self.seen = []

            def handle_events(self, events, env):
                self.seen.extend(e["message_id"] for e in events)
                env["seen"] = list(self.seen)
                return events

            def commit(self):
                pass

            def rollback(self):
                pass
    """)
    pipelines = load("p: [acc]\n", {"acc": f"{name}:Accumulating"})
    first, second = dict(ENV), dict(ENV)
    assert pipelines["p"].run([event("a"), event("b", 1)], first).ok
    assert pipelines["p"].run([event("c")], second).ok
    assert first["seen"] == ["a", "b"] and second["seen"] == ["c"]


def test_handlers_share_env_within_a_run():
    """A value one handler leaves in env is seen by the later handlers of the same run."""
    journal = Journal()
    seen = {}

    def leave(events, env):
        env["note"] = "from-first"
        return events

    def read(events, env):
        seen["note"] = env.get("note")
        return events

    pipeline = Pipeline("p", (journal.handler("first", handle=leave), journal.handler("second", handle=read)))
    assert pipeline.run([event("a")], dict(ENV)).ok
    assert seen == {"note": "from-first"}


# -- winchester check --------------------------------------------------------------------------


def test_check_passes_on_the_example_pipelines():
    """`winchester check` on etc/winchester.yaml loads its pipelines without a problem."""
    result = run("check", "-c", str(ETC / "winchester.yaml"))
    assert result.exit_code == 0, result.output
    assert "2 pipelines" in result.output


def test_check_reports_a_bad_pipeline_param_with_file_and_line(etc_copy):
    """A param the handler does not take is reported by check with pipelines.yaml:line."""
    pipelines = etc_copy / "pipelines.yaml"
    text = pipelines.read_text().replace(
        "usage_audit:\n  - logger\n",
        "usage_audit:\n  - name: logger\n    params:\n      verbose: true\n", 1)
    assert text != pipelines.read_text()
    pipelines.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip() == "params:")
    result = run("check", "-c", str(etc_copy / "winchester.yaml"))
    assert result.exit_code == 1
    assert f"{pipelines}:{line}:" in result.output
    assert "pipeline 'usage_audit' > entry #1 (logger) > params" in result.output
    assert "unexpected keyword argument 'verbose'" in result.output
