"""SMTP transport security against a real server: STARTTLS, implicit TLS, login, verification."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from notifier.app import NotifierCelery
from notifier.client import publish
from notifier.deadletter import DeadLetter, DeadLetterStore
from notifier.settings import Settings
from notifier.testing import SmtpSink
from tests import samples
from tests.polling import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def starttls_sink(server_context: ssl.SSLContext) -> Iterator[SmtpSink]:
    with SmtpSink(
        starttls_context=server_context,
        require_starttls=True,
        credentials=("mailer", "s3cret-password"),
    ) as sink:
        yield sink


def test_starttls_with_login_delivers_over_an_encrypted_connection(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    starttls_sink: SmtpSink,
    ca_file: Path,
) -> None:
    app = worker_for(
        settings_for(
            mail_port=starttls_sink.port,
            mail_use_tls=True,
            mail_ca_file=ca_file,
            mail_username="mailer",
            mail_password="s3cret-password",
        )
    )
    publish(samples.user_registered(), app=app)

    [mail] = starttls_sink.wait_for(1, timeout=15)
    assert mail.rcpt_tos == ("ada@example.com",)


def test_implicit_tls_delivers(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    server_context: ssl.SSLContext,
    ca_file: Path,
) -> None:
    with SmtpSink(implicit_tls_context=server_context) as sink:
        app = worker_for(
            settings_for(
                mail_port=sink.port, mail_use_tls=False, mail_use_ssl=True, mail_ca_file=ca_file
            )
        )
        publish(samples.user_registered(), app=app)

        [mail] = sink.wait_for(1, timeout=15)
        assert mail.rcpt_tos == ("ada@example.com",)


def test_an_untrusted_certificate_is_refused_and_dead_lettered(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    starttls_sink: SmtpSink,
    dead_letters: DeadLetterStore,
) -> None:
    app = worker_for(settings_for(mail_port=starttls_sink.port, mail_use_tls=True))
    publish(samples.user_registered(), app=app)

    [entry] = eventually(lambda: list(dead_letters), timeout=15, what="a dead letter")
    assert entry.error.startswith("ConfigurationError: TLS certificate rejected")
    assert starttls_sink.messages == []


def test_a_wrong_password_is_dead_lettered_at_once_without_leaking_it(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    starttls_sink: SmtpSink,
    ca_file: Path,
    dead_letters: DeadLetterStore,
) -> None:
    app = worker_for(
        settings_for(
            mail_port=starttls_sink.port,
            mail_use_tls=True,
            mail_ca_file=ca_file,
            mail_username="mailer",
            mail_password="wrong-password-123",
        )
    )
    publish(samples.user_registered(), app=app)

    [entry] = eventually(lambda: list(dead_letters), timeout=15, what="a dead letter")
    assert isinstance(entry, DeadLetter)
    assert entry.attempts == 1
    assert "authentication failed" in entry.error
    assert "wrong-password-123" not in entry.model_dump_json()


def test_credentials_are_never_sent_over_a_plain_connection(
    worker_for: Callable[[Settings], NotifierCelery],
    settings_for: Callable[..., Settings],
    smtp_sink: SmtpSink,
    dead_letters: DeadLetterStore,
) -> None:
    app = worker_for(settings_for(mail_username="mailer", mail_password="s3cret-password"))
    publish(samples.user_registered(), app=app)

    [entry] = eventually(lambda: list(dead_letters), timeout=15, what="a dead letter")
    assert "refusing to send SMTP credentials" in entry.error
    assert smtp_sink.messages == []
