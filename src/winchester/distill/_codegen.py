"""Compile an event definition's traits into one generated Python function.

The distiller runs every trait of every notification; a loop calling a
closure per trait spends most of its time on the calls. The generated
function does the same work straight-line: each payload-level mapping
(``payload``, ``payload.image_meta``) is looked up once and shared by every
trait reading under it, and text and integer values that need no conversion
are stored without a call. Traits with plugins or full JSONPath fields keep
their general code (``generic_trait``).

The result must equal the general code's for every input: the distiller's
tests (including StackDistiller's recorded output) run through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from winchester.distill._convert import ConversionError
from winchester.distill._fields import simple_steps
from winchester.distill._plugins import SplitPlugin

Extractor = Callable[[Any, dict, Callable, Any], None]
_INT64 = (-(2**63), 2**63 - 1)


def compile_extractor(plan: tuple, generic_trait: Callable) -> Extractor:
    """Build ``extract(body, event, warn, definition)`` for one definition's trait plan.

    ``plan`` holds ``(name, first, convert, is_text, plugin, paths)`` per trait;
    ``generic_trait(entry, body, event, warn, definition)`` handles the rest.
    """
    namespace: dict[str, Any] = {"ConversionError": ConversionError,
                                 "generic_trait": generic_trait, "INT_MIN": _INT64[0],
                                 "INT_MAX": _INT64[1]}
    roots: dict[tuple[str, ...], str] = {}
    body_lines: list[str] = []

    def root_variable(prefix: tuple[str, ...]) -> str:
        """A variable holding body[prefix...] when it is a dict (else None), computed once."""
        if prefix in roots:
            return roots[prefix]
        parent = "body" if len(prefix) == 1 else root_variable(prefix[:-1])
        variable = f"r{len(roots)}"
        roots[prefix] = variable
        getter = (f"body.get({prefix[-1]!r})" if parent == "body"
                  else f"({parent}.get({prefix[-1]!r}) if {parent} is not None else None)")
        body_lines.append(f"    {variable} = {getter}")
        body_lines.append(f"    if not isinstance({variable}, dict): {variable} = None")
        return variable

    for index, entry in enumerate(plan):
        name, _first, convert, is_text, plugin, paths = entry
        steps_list = [simple_steps(path.text) for path in paths]
        # split, the one plugin nearly every file uses, looks at one value at a time.
        first_value_plugin = type(plugin) is SplitPlugin
        inlinable = (plugin is None or first_value_plugin) and all(
            steps is not None and all(isinstance(step, str) for step in steps)
            and not path.text.strip().startswith("(") and "`" not in path.text
            for steps, path in zip(steps_list, paths))
        if not inlinable:
            namespace[f"entry{index}"] = entry
            body_lines.append(f"    generic_trait(entry{index}, body, event, warn, definition)")
            continue
        namespace[f"convert{index}"] = convert
        lookups = []
        for steps in steps_list:
            if len(steps) == 1:
                lookups.append(f"body.get({steps[0]!r})")
            else:
                parent = root_variable(tuple(steps[:-1]))
                lookups.append(f"({parent}.get({steps[-1]!r}) if {parent} is not None else None)")
        if first_value_plugin:
            namespace[f"plugin{index}"] = plugin
            # split takes the first field whose value has the segment. As in the
            # general code: a plugin that raises loses its trait, never the event.
            body_lines.append("    v = None")
            for lookup in lookups:
                body_lines += [
                    "    if v is None:",
                    f"        w = {lookup}",
                    "        if w is not None:",
                    f"            try: v = plugin{index}.trait_value([('', w)])",
                    "            except Exception as exc:",
                    f"                warn(definition, {name!r}, f'plugin raised {{type(exc).__name__}}: {{exc}}')",
                    "                v = None",
                ]
        else:
            body_lines.append(f"    v = {lookups[0]}")
            for lookup in lookups[1:]:
                body_lines.append(f"    if v is None: v = {lookup}")
        store = f"event[{name!r}]"
        if is_text:
            body_lines += [
                "    if v is not None:",
                "        if v.__class__ is str and '\\x00' not in v and v.isascii():",
                f"            {store} = v",
                "        else:",
                f"            try: {store} = convert{index}(v)",
                f"            except ConversionError as exc: warn(definition, {name!r}, str(exc))",
            ]
            continue
        body_lines += ["    if v is not None and v != '':"]
        if convert.__name__ == "to_int":
            body_lines += [
                "        if v.__class__ is int and INT_MIN <= v <= INT_MAX:",
                f"            {store} = v",
                "        else:",
                f"            try: {store} = convert{index}(v)",
                f"            except ConversionError as exc: warn(definition, {name!r}, str(exc))",
            ]
        else:
            body_lines += [
                f"        try: {store} = convert{index}(v)",
                f"        except ConversionError as exc: warn(definition, {name!r}, str(exc))",
            ]
    source = "def extract(body, event, warn, definition):\n" + (
        "\n".join(body_lines) if body_lines else "    pass") + "\n"
    exec(compile(source, "<event definition>", "exec"), namespace)  # noqa: S102 - our own code
    extract = namespace["extract"]
    extract.source = source  # for debugging: print(definition.extract.source)
    return extract
