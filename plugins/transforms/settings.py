"""Transform settings per tenant: the run's defaults, overridden per tenant by ``CDP_TENANT_SETTINGS``.

``default_region`` comes from ``--default-region`` (the ``default_region`` setting), else ``CDP_DEFAULT_REGION``;
``CDP_TENANT_SETTINGS`` holds a JSON object of per-tenant overrides, ``{"acme": {"default_region": "GB"}}`` (a
Meltano setting of kind ``object`` becomes exactly that variable). Every value is checked before any Spark work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from plugins.core.errors import ConfigError
from plugins.core.layout import validate_name
from plugins.transforms.run import TransformSettings

DEFAULT_REGION_ENV_VAR = "CDP_DEFAULT_REGION"
TENANT_SETTINGS_ENV_VAR = "CDP_TENANT_SETTINGS"
#: The settings a tenant may override (the others are code-level: identity rules, survivorship).
TENANT_SETTING_NAMES = ("default_region",)


def region_code(value: str, setting: str = "default_region") -> str:
    """``value`` as an ISO 3166-1 alpha-2 code (any case); a ConfigError naming ``setting`` otherwise."""
    import pycountry

    code = value.strip().upper()
    if len(code) != 2 or pycountry.countries.get(alpha_2=code) is None:
        raise ConfigError(setting, f"'{value}' is not an ISO 3166-1 alpha-2 country code (e.g. GB, FR, US)")
    return code


def parse_tenant_settings(text: str | None) -> dict[str, dict[str, Any]]:
    """The per-tenant overrides of ``CDP_TENANT_SETTINGS``: ``{tenant: {setting: value}}``, every value checked."""
    if not text or not text.strip():
        return {}
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        example = '{"acme": {"default_region": "GB"}}'
        raise ConfigError(TENANT_SETTINGS_ENV_VAR, f"is not JSON ({exc}); use an object like {example}") from None
    if not isinstance(document, dict):
        raise ConfigError(TENANT_SETTINGS_ENV_VAR, 'must be a JSON object of tenants, e.g. {"acme": {...}}')
    nested: dict[str, Any] = {}
    for name, value in document.items():
        # Meltano flattens an object setting into dotted keys ({"acme.default_region": "GB"}): nest them again.
        tenant, dot, setting = str(name).partition(".")
        if dot:
            nested.setdefault(tenant, {})[setting] = value
        else:
            nested[tenant] = value
    parsed: dict[str, dict[str, Any]] = {}
    for tenant, overrides in nested.items():
        validate_name(TENANT_SETTINGS_ENV_VAR, tenant)
        if not isinstance(overrides, dict):
            raise ConfigError(TENANT_SETTINGS_ENV_VAR, f"tenant '{tenant}': its settings must be a JSON object")
        if unknown := sorted(set(overrides) - set(TENANT_SETTING_NAMES)):
            raise ConfigError(
                TENANT_SETTINGS_ENV_VAR,
                f"tenant '{tenant}': unknown setting(s) {', '.join(unknown)}; known: {', '.join(TENANT_SETTING_NAMES)}",
            )
        checked: dict[str, Any] = {}
        if (region := overrides.get("default_region")) is not None:
            if not isinstance(region, str):
                raise ConfigError(TENANT_SETTINGS_ENV_VAR, f"tenant '{tenant}': default_region must be a string")
            checked["default_region"] = region_code(region, f"{TENANT_SETTINGS_ENV_VAR} {tenant}.default_region")
        parsed[tenant] = checked
    return parsed


class TenantSettings:
    """The settings of each tenant: the run's defaults with the tenant's overrides."""

    def __init__(self, defaults: TransformSettings, overrides: Mapping[str, Mapping[str, Any]]) -> None:
        self.defaults = defaults
        self.overrides = dict(overrides)

    @classmethod
    def resolve(
        cls,
        *,
        default_region: str | None = None,
        tenant_settings: str | None = None,
        base: TransformSettings | None = None,
    ) -> TenantSettings:
        """From explicit values, else ``CDP_DEFAULT_REGION`` and ``CDP_TENANT_SETTINGS``."""
        region = default_region or os.environ.get(DEFAULT_REGION_ENV_VAR) or None
        defaults = base or TransformSettings()
        if region:
            defaults = replace(defaults, default_region=region_code(region))
        elif defaults.default_region:
            defaults = replace(defaults, default_region=region_code(defaults.default_region))
        text = tenant_settings if tenant_settings is not None else os.environ.get(TENANT_SETTINGS_ENV_VAR)
        return cls(defaults, parse_tenant_settings(text))

    def for_tenant(self, tenant: str) -> TransformSettings:
        return replace(self.defaults, **self.overrides.get(tenant, {}))
