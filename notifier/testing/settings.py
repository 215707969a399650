"""Settings for tests: from the values given and the defaults, never from the environment."""

from __future__ import annotations

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from notifier.settings import Settings

__all__ = ["make_settings"]


def make_settings(**overrides: object) -> Settings:
    """Settings from these values and the defaults only, never from the environment.

    ``MAIL_DEFAULT_SENDER`` defaults to ``Bookings <bookings@example.com>`` so
    email works out of the box; pass any field by its lower-case name.
    """
    values: dict[str, object] = {"mail_default_sender": "Bookings <bookings@example.com>"}
    values.update(overrides)
    return _HermeticSettings(**values)  # type: ignore[arg-type]


class _HermeticSettings(Settings):
    """Settings that read their init arguments only: no environment, no .env file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)
