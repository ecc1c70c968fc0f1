"""Campaign content: sandboxed, strict Jinja2 templates rendered per member, and deterministic A/B variants.

Templates render in :class:`jinja2.sandbox.SandboxedEnvironment` (no attribute of Python internals, no unsafe
calls: ``{{ ''.__class__ }}`` and the like are refused) with :class:`jinja2.StrictUndefined` (a name that is not a
column fails instead of rendering as nothing) and no globals; ``html_body`` is autoescaped, the subject and the text
body are not (they are not HTML). A column whose value is null renders as the empty string. The variables a template
may use are the content's declared ``variables``: checked against the templates when the content is parsed, and
against the segment export's columns at preview and at launch (:func:`check_columns`), before anything is sent.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from activators.campaigns.store import CampaignError
from plugins.descriptors import RenderedContent

if TYPE_CHECKING:
    from jinja2 import Template

    from activators.campaigns.store import Content, Variant

_TEMPLATE_KEYS = ("subject", "text_body", "html_body")


class ContentError(CampaignError):
    """A content that cannot be rendered as asked (the message names the template or the variable)."""


class MissingVariableError(ContentError):
    """A declared variable that the segment export has no column for: the preview and the launch stop before sending."""


def _finalize(value: Any) -> Any:
    """Null columns render as nothing (not ``None``)."""
    return "" if value is None else value


@lru_cache(maxsize=2)
def _environment(html: bool) -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    environment = SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=html, finalize=_finalize, keep_trailing_newline=True
    )
    environment.globals.clear()  # range, dict, lipsum, cycler, joiner, namespace: nothing a template needs
    return environment


@lru_cache(maxsize=256)
def _compiled(source: str, html: bool) -> Template:
    template: Template = _environment(html).from_string(source)
    return template


def _templates(content: Content, variant: Variant | None) -> dict[str, str | None]:
    """The content's templates with the variant's overrides."""
    chosen = {key: getattr(content, key) for key in _TEMPLATE_KEYS}
    if variant is not None:
        chosen.update({key: getattr(variant, key) for key in _TEMPLATE_KEYS if getattr(variant, key) is not None})
    return chosen


def check_templates(content: Content) -> tuple[str, str] | None:
    """``(path, problem)`` for the first template that does not compile or uses a name not in ``variables``."""
    from jinja2 import TemplateSyntaxError, meta

    sources: list[tuple[str, str, bool]] = [
        (key, source, key == "html_body") for key in _TEMPLATE_KEYS if (source := getattr(content, key)) is not None
    ]
    for index, variant in enumerate(content.variants):
        sources.extend(
            (f"variants[{index}].{key}", source, key == "html_body")
            for key in _TEMPLATE_KEYS
            if (source := getattr(variant, key)) is not None
        )
    declared = set(content.variables)
    for path, source, html in sources:
        try:
            names = meta.find_undeclared_variables(_environment(html).parse(source))
        except TemplateSyntaxError as exc:
            return path, f"template syntax error at line {exc.lineno}: {exc.message}"
        unknown = sorted(names - declared)
        if unknown:
            return path, f"uses '{unknown[0]}', which is not in variables; declare it (a column of the segment export)"
    return None


def check_columns(content: Content, columns: Iterable[str], *, campaign: str = "") -> None:
    """Every declared variable is a column of the export; MissingVariableError naming the first that is not."""
    available = set(columns)
    missing = [variable for variable in content.variables if variable not in available]
    if missing:
        who = f"campaign '{campaign}': " if campaign else ""
        raise MissingVariableError(
            f"{who}content '{content.name}' uses variable '{missing[0]}', which the segment export has no column for; "
            "remove it from variables or export it (cdp segment export --columns)"
        )


def _variant(content: Content, name: str) -> Variant | None:
    if not name:
        return None
    for variant in content.variants:
        if variant.name == name:
            return variant
    raise ContentError(f"content '{content.name}' has no variant '{name}'")


def render(content: Content, variant: str, columns: Mapping[str, Any]) -> RenderedContent:
    """The content's templates (``variant``'s overrides applied; "" for none) rendered for one member's ``columns``.

    Refusals are one-line ContentErrors: an undefined name, an unsafe attribute or call, a runtime template error.
    """
    from jinja2 import TemplateError, UndefinedError
    from jinja2.exceptions import SecurityError

    templates = _templates(content, _variant(content, variant))
    rendered: dict[str, str | None] = {}
    for key, source in templates.items():
        if source is None:
            rendered[key] = None
            continue
        try:
            rendered[key] = _compiled(source, key == "html_body").render(columns)
        except SecurityError as exc:
            raise ContentError(f"content '{content.name}' {key}: refused by the template sandbox: {exc}") from None
        except UndefinedError as exc:
            raise ContentError(f"content '{content.name}' {key}: {exc.message}") from None
        except TemplateError as exc:
            raise ContentError(f"content '{content.name}' {key}: {exc}") from None
    return RenderedContent(
        subject=rendered["subject"] or "", text=rendered["text_body"] or "", html=rendered["html_body"]
    )


def _position(campaign: str, customer_id: str) -> float:
    """A customer's place in [0, 1) for a campaign: the first 8 bytes of SHA-256 of ``campaign:customer_id``."""
    digest = hashlib.sha256(f"{campaign}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_variant(campaign: str, customer_id: str, variants: Sequence[Variant]) -> str:
    """The variant of ``customer_id`` in ``campaign``: the same on every run and every machine (a hash, not a random
    draw), each variant taking its share of customers by weight. "" when the content has no variants."""
    if not variants:
        return ""
    bounds = list(accumulate(variant.weight for variant in variants))
    index = bisect_right(bounds, _position(campaign, customer_id) * bounds[-1])
    return variants[min(index, len(variants) - 1)].name
