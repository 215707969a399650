"""``REDIS_URL=sentinel://…`` (docs/DESIGN.md §9): parsed, checked, described, never leaked."""

from __future__ import annotations

import traceback

import pytest
import redis
from kombu import Connection
from redis.sentinel import SentinelConnectionPool

from celeryconfig import build
from notifier.errors import ConfigurationError
from notifier.health import describe_redis_url
from notifier.redis_clients import SentinelMaster, quick_redis, redis_client
from notifier.sentinel_url import SentinelUrl, is_sentinel_url
from notifier.testing import make_settings

SECRET = "s3cr3t-redis-pw"
THREE = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3/2"


def test_every_sentinel_is_read_with_its_port_or_the_default_one() -> None:
    parsed = SentinelUrl.parse(THREE)

    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))


def test_the_database_may_follow_the_last_sentinel_as_in_kombus_examples() -> None:
    assert SentinelUrl.parse(THREE).db == 2


def test_no_database_means_database_0() -> None:
    assert SentinelUrl.parse("sentinel://h1:1;sentinel://h2:2").db == 0


def test_the_user_info_is_the_redis_password_as_in_kombu() -> None:
    parsed = SentinelUrl.parse(f"sentinel://:{SECRET}@h1:1;sentinel://h2:2/0")

    assert parsed.password is not None
    assert parsed.password.get_secret_value() == SECRET
    assert parsed.username is None


def test_a_username_and_an_escaped_password_are_read() -> None:
    parsed = SentinelUrl.parse("sentinel://app:p%40ss%3Bword@h1:1/0")

    assert parsed.username == "app"
    assert parsed.password is not None
    assert parsed.password.get_secret_value() == "p@ss;word"


def test_the_sentinels_own_password_comes_from_the_query() -> None:
    parsed = SentinelUrl.parse(f"sentinel://h1:1;sentinel://h2:2/0?sentinel_password={SECRET}")

    assert parsed.sentinel_kwargs() == {"password": SECRET}
    assert parsed.password is None


def test_the_broker_url_carries_database_and_password_on_every_part() -> None:
    # kombu reads them from the first part only.
    parsed = SentinelUrl.parse(f"sentinel://h1:1;sentinel://:{SECRET}@h2:2/5")

    assert parsed.broker_url() == f"sentinel://:{SECRET}@h1:1/5;sentinel://:{SECRET}@h2:2/5"


def test_kombu_reads_the_database_and_password_from_the_broker_url() -> None:
    url = SentinelUrl.parse(f"sentinel://h1:1;sentinel://:{SECRET}@h2:2/5").broker_url()

    connection = Connection(url, transport="notifier.transport:SentinelTransport")

    assert (connection.virtual_host, connection.password) == ("5", SECRET)
    assert len(connection.alt) == 2


def test_ipv6_sentinels_keep_their_brackets() -> None:
    parsed = SentinelUrl.parse("sentinel://[::1]:26379/0")

    assert parsed.sentinels == (("::1", 26379),)
    assert parsed.broker_url() == "sentinel://[::1]:26379/0"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        (f"sentinel://:{SECRET}@h1:1/0;redis://h2:2/0", "sentinel://"),
        (f"sentinel://:{SECRET}@:1/0", "no host"),
        (f"sentinel://:{SECRET}@h1:99999/0", "host or port"),
        (f"sentinel://:{SECRET}@h1:1/zero", "must be a number"),
        (f"sentinel://:{SECRET}@h1:1/1;sentinel://h2:2/2", "different values for the database"),
        (
            f"sentinel://:{SECRET}@h1:1;sentinel://:other@h2:2/0",
            "different values for the password",
        ),
        (f"sentinel://:{SECRET}@h1:1/0?ssl=true", "unknown option"),
    ],
)
def test_a_malformed_sentinel_url_is_a_configuration_error_that_hides_the_url(
    url: str, complaint: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_settings(redis_url=url)

    shown = "".join(traceback.format_exception(caught.value))
    assert "REDIS_URL" in str(caught.value)
    assert complaint in str(caught.value)
    assert SECRET not in shown
    assert "h1" not in shown


def test_a_redis_url_is_not_a_sentinel_url() -> None:
    assert not is_sentinel_url("redis://localhost:6379/0")
    assert is_sentinel_url("SENTINEL://h:1/0")


def test_the_master_name_defaults_to_mymaster_and_comes_from_its_setting() -> None:
    assert make_settings().notifier_redis_master_name == "mymaster"
    assert make_settings(notifier_redis_master_name="cache").notifier_redis_master_name == "cache"


def test_health_names_the_master_and_the_sentinels_but_no_password() -> None:
    described = describe_redis_url(f"sentinel://:{SECRET}@h1:1;sentinel://h2:2/3", "orders")

    assert described == "master 'orders' via sentinels h1:1,h2:2/3"


def test_the_broker_asks_the_sentinels_for_the_configured_master() -> None:
    config = build(
        make_settings(
            redis_url=f"sentinel://h1:1;sentinel://h2:2/4?sentinel_password={SECRET}",
            notifier_redis_master_name="orders",
        )
    )

    options = config["broker_transport_options"]
    assert config["broker_transport"] == "notifier.transport:SentinelTransport"
    assert config["broker_url"] == "sentinel://h1:1/4;sentinel://h2:2/4"
    assert options["master_name"] == "orders"
    assert options["sentinel_kwargs"]["password"] == SECRET
    assert options["sentinel_kwargs"]["socket_timeout"] == options["socket_timeout"]


def test_a_redis_url_reaches_the_broker_unchanged() -> None:
    config = build(make_settings(redis_url="redis://:pw@cache:6380/3"))

    assert config["broker_url"] == "redis://:pw@cache:6380/3"
    assert "master_name" not in config["broker_transport_options"]


def test_the_stores_client_asks_the_sentinels_for_the_master_with_its_retries() -> None:
    client = redis_client(make_settings(redis_url=f"sentinel://:{SECRET}@h1:1;sentinel://h2:2/4"))

    pool = client.connection_pool
    assert isinstance(client, SentinelMaster)
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 4
    assert pool.connection_kwargs["password"] == SECRET
    assert pool.connection_kwargs["socket_timeout"] == 10
    assert pool.connection_kwargs["retry"].get_retries() == 6
    assert [
        (s.connection_pool.connection_kwargs["host"]) for s in pool.sentinel_manager.sentinels
    ] == ["h1", "h2"]
    client.close()


def test_the_stores_client_retries_a_read_only_reply_like_a_broken_connection() -> None:
    client = redis_client(make_settings(redis_url="redis://127.0.0.1:1/0"))

    assert redis.ReadOnlyError in client.connection_pool.connection_kwargs["retry_on_error"]
    client.close()


def test_a_quick_probe_of_sentinels_spends_its_timeout_across_them() -> None:
    client = quick_redis("sentinel://h1:1;sentinel://h2:2/0", timeout=2.0, master_name="x")

    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.connection_kwargs["socket_timeout"] == 2.0
    assert pool.connection_kwargs["retry"].get_retries() == 0
    for sentinel in pool.sentinel_manager.sentinels:
        assert sentinel.connection_pool.connection_kwargs["socket_connect_timeout"] == 1.0
    client.close()
