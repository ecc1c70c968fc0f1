"""Settings patterns refuse a trailing newline, whichever validator reads them.

Python's ``re`` (which the jsonschema library uses for ``pattern``) lets ``$`` match before a final newline, so a plain
``^[a-z]+$`` accepts ``"acme\\n"`` while jsonschema-rs (ECMA semantics) refuses it. Every anchored pattern in a
connector's settings therefore ends in ``(?!\\n)$``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from plugins.manager import create_plugin_manager, sources, targets


def _patterns(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("pattern"), str):
            yield schema["pattern"]
        for value in schema.values():
            yield from _patterns(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _patterns(value)


def _connector_classes() -> list[Any]:
    pm = create_plugin_manager()
    found = [source.load_tap() for source in sources(pm).values()]
    return found + [target.load_target() for target in targets(pm).values()]


@pytest.mark.parametrize("connector", _connector_classes(), ids=lambda c: c.name)
def test_every_anchored_settings_pattern_refuses_a_trailing_newline(connector: Any) -> None:
    for pattern in _patterns(connector.config_jsonschema):
        if pattern.endswith("$"):
            assert pattern.endswith("(?!\\n)$"), f"{connector.name}: pattern {pattern!r} lets 'value\\n' through"


@pytest.mark.parametrize(
    ("setting", "good"), [("tenant", "acme"), ("provider", "stripe"), ("api_url", "http://127.0.0.1:12111")]
)
def test_tap_settings_with_a_trailing_newline_are_refused(setting: str, good: str) -> None:
    from taps.stripe.tap import TapStripe

    validator = jsonschema.Draft202012Validator(TapStripe.config_jsonschema["properties"][setting])
    assert validator.is_valid(good)
    assert not validator.is_valid(good + "\n")
