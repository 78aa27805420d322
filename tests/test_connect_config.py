"""connect.json, the AMQ / Qpid Proton connection configuration file, as documented (Qpid
Proton's docs/connect-config.md) and where proton-python 0.40 reads it otherwise
(amqscale.security.load_connect_config; docs/security.md has the table).

The parsing is tested on files in a temporary directory; the search order with a
temporary HOME and working directory (never the real ~ or /etc); then `connect()` with no
URL on each face against RabbitMQ: PLAIN over plain AMQP only with `sasl.allow_insecure`,
and the `tls` section's CA over its TLS listener.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import amqscale
import amqscale.aio as aio
from amqscale import reactor
from amqscale.handlers import MessagingHandler
from amqscale.message import Message
from amqscale.security import (
    TLS,
    ConnectConfigError,
    InsecureTLSWarning,
    connect_config_paths,
    load_connect_config,
)
from amqscale.testing.brokers import RabbitMQ

TIMEOUT = 30

pytestmark = pytest.mark.timeout(120)


def write(directory: Path, config: Any, name: str = "connect.json") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def load(tmp_path: Path, config: Any) -> dict[str, Any]:
    return load_connect_config(write(tmp_path, config))


# ---- the documented defaults and forms ---------------------------------------------------


def test_an_empty_object_is_amqps_to_localhost_5671_verifying_the_server(
        tmp_path: Path) -> None:
    options = load(tmp_path, {})
    assert options == {"url": "amqps://localhost:5671", "tls": TLS(verify="peer-name")}


def test_the_documented_example_with_its_defaults_spelled_out(tmp_path: Path) -> None:
    # docs/connect-config.md's block, comments and all; every value its default.
    text = """{
      "scheme": "amqps",   // [string] "amqp" (no TLS) or "amqps"
      "host": "localhost", // [string] DNS or IP address for connection.
      "port": "amqps",     // [string] "amqp", "amqps" or port number.
      "user": null,        // [string] Authentication user name
      "password": null,    // [string] Authentication password
      "sasl": {
        "enable": true,         // [bool] Enable or disable SASL
        "mechanisms": null,     /* [list] List of allowed SASL mechanism names. */
        "allow_insecure": false // [boolean] Allow mechanisms that send clear-text passwords
      },
      "tls": {"cert": null, "key": null, "ca": null, "verify": true}
    }"""
    assert load(tmp_path, text) == {"url": "amqps://localhost:5671",
                                    "allow_insecure_mechanisms": False,
                                    "tls": TLS(verify="peer-name")}


@pytest.mark.parametrize(("config", "url"), [
    ({"scheme": "amqp"}, "amqp://localhost:5672"),
    ({"scheme": "amqp", "port": "amqps"}, "amqp://localhost:5671"),
    ({"scheme": "amqp", "port": 5673}, "amqp://localhost:5673"),
    ({"scheme": "amqp", "port": "5674"}, "amqp://localhost:5674"),
    ({"port": "amqp"}, "amqps://localhost:5672"),
    ({"scheme": "amqp", "host": "::1", "port": 1}, "amqp://[::1]:1"),
    ({"scheme": "amqp", "host": "broker.example"}, "amqp://broker.example:5672"),
])
def test_scheme_host_and_port(tmp_path: Path, config: dict[str, Any], url: str) -> None:
    assert load(tmp_path, config)["url"] == url


def test_user_password_mechanisms_and_allow_insecure(tmp_path: Path) -> None:
    options = load(tmp_path, {"scheme": "amqp", "user": "alice", "password": "a//b/*c*/",
                              "sasl": {"mechanisms": ["scram-sha-256", "PLAIN"],
                                       "allow_insecure": True}})
    assert options == {"url": "amqp://localhost:5672", "user": "alice",
                       "password": "a//b/*c*/",  # comment markers inside a string stay
                       "sasl_mechanisms": "SCRAM-SHA-256 PLAIN",
                       "allow_insecure_mechanisms": True}


def test_mechanisms_as_one_string_as_proton_and_rhea_take_them(tmp_path: Path) -> None:
    options = load(tmp_path, {"sasl": {"mechanisms": "EXTERNAL"}})
    assert options["sasl_mechanisms"] == "EXTERNAL"


def test_null_is_the_default(tmp_path: Path) -> None:
    assert load(tmp_path, {"scheme": None, "host": None, "port": None, "user": None,
                           "sasl": None, "tls": None}) == load(tmp_path, {})


def test_the_tls_section(tmp_path: Path) -> None:
    ca = write(tmp_path, "not read here", "ca.pem")
    cert = write(tmp_path, "not read here", "cert.pem")
    options = load(tmp_path, {"host": "broker.example", "tls": {
        "ca": str(ca), "cert": str(cert), "key": str(cert), "verify": True}})
    assert options["tls"] == TLS(ca=str(ca), cert=str(cert), key=str(cert),
                                 verify="peer-name")


def test_tls_verify_false_accepts_any_server_and_warns_at_connect(tmp_path: Path) -> None:
    options = load(tmp_path, {"tls": {"verify": False}})
    assert options["tls"] == TLS(verify="none")
    with pytest.warns(InsecureTLSWarning):
        options["tls"].wire(server=False)


@pytest.mark.parametrize("key", ["enable", "enabled"])
def test_tls_enable_true_agrees_with_amqps(tmp_path: Path, key: str) -> None:
    assert load(tmp_path, {"tls": {key: True}})["tls"] == TLS(verify="peer-name")


@pytest.mark.parametrize("key", ["enable", "enabled"])
def test_tls_enable_false_agrees_with_amqp(tmp_path: Path, key: str) -> None:
    assert load(tmp_path, {"scheme": "amqp", "tls": {key: False}}) == {
        "url": "amqp://localhost:5672"}


@pytest.mark.parametrize("key", ["enable", "enabled"])
def test_sasl_enable_true_is_the_default(tmp_path: Path, key: str) -> None:
    assert load(tmp_path, {"sasl": {key: True}}) == load(tmp_path, {})


# ---- what is refused, and how it says so -------------------------------------------------


@pytest.mark.parametrize("key", ["enable", "enabled"])
def test_sasl_disabled_is_refused_not_pretended(tmp_path: Path, key: str) -> None:
    # The worker's OpenConnection has no way to leave SASL out (workers.security runs
    # pn_sasl on every client transport): say so rather than connect with SASL anyway.
    path = write(tmp_path, {"sasl": {key: False}})
    with pytest.raises(NotImplementedError, match="sasl.enable false") as info:
        load_connect_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("config", "match"), [
    ({"hostname": "x"}, r"unknown key hostname \(the keys of the file: scheme, host"),
    ({"sasl": {"enabel": False}}, r"unknown key sasl\.enabel \(the keys of sasl: enable"),
    ({"tls": {"ca_file": "x"}}, r"unknown key tls\.ca_file"),
    ({"port": True}, r"port must be a number or a string, not true"),
    ({"port": "http"}, r"port must be a number from 1 to 65535, \"amqp\" or \"amqps\""),
    ({"port": 70000}, r"port must be a number from 1"),
    ({"port": 0}, r"port must be a number from 1"),
    ({"scheme": "https"}, r"scheme must be \"amqp\" or \"amqps\", not \"https\""),
    ({"scheme": True}, r"scheme must be a string, not true"),
    ({"host": 5}, r"host must be a string, not 5"),
    ({"host": ""}, r"host must not be empty"),
    ({"user": ["a"]}, r"user must be a string"),
    ({"password": "secret"}, r"a password without a user"),
    ({"sasl": "PLAIN"}, r"sasl must be an object, not \"PLAIN\""),
    ({"sasl": {"enable": "no"}}, r"sasl\.enable must be true or false, not \"no\""),
    ({"sasl": {"enable": True, "enabled": False}}, r"sasl\.enable and sasl\.enabled disagree"),
    ({"sasl": {"allow_insecure": 1}}, r"sasl\.allow_insecure must be true or false, not 1"),
    ({"sasl": {"mechanisms": 1}}, r"sasl\.mechanisms must be a list or a string, not 1"),
    ({"sasl": {"mechanisms": ["PLAIN", 1]}}, r"sasl\.mechanisms must be a list of mechanism"),
    ({"sasl": {"mechanisms": []}}, r"sasl\.mechanisms must name at least one"),
    ({"tls": []}, r"tls must be an object, not \[\]"),
    ({"tls": {"verify": "false"}}, r"tls\.verify must be true or false, not \"false\""),
    ({"tls": {"ca": 1}}, r"tls\.ca must be a string, not 1"),
    ({"tls": {"key": "k.pem"}}, r"tls: a TLS key without a certificate"),
    ({"scheme": "amqp", "tls": {"verify": False}}, r"a tls section needs scheme \"amqps\""),
    ({"scheme": "amqp", "tls": {"enable": True}}, r"a tls section needs scheme \"amqps\""),
    ({"tls": {"enabled": False}}, r"tls\.enable false with scheme \"amqps\""),
    ({"tls": {"enable": True, "enabled": False}}, r"tls\.enable and tls\.enabled disagree"),
    ([], r"the configuration must be a JSON object"),
    ("{\"host\": \"x\",}", r"is not valid JSON"),
])
def test_a_bad_file_names_itself_and_the_key(tmp_path: Path, config: Any, match: str) -> None:
    path = write(tmp_path, config)
    with pytest.raises(ConnectConfigError, match=match) as info:
        load_connect_config(path)
    assert str(info.value).startswith(str(path))
    assert isinstance(info.value, ValueError)


def test_a_missing_tls_file_names_the_configuration_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"tls": {"ca": str(tmp_path / "missing-ca.pem")}})
    with pytest.raises(FileNotFoundError, match="missing-ca.pem") as info:
        load_connect_config(path)
    assert str(path) in str(info.value)


def test_plain_over_amqp_needs_allow_insecure(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"scheme": "amqp", "user": "u", "password": "p", "sasl": {"mechanisms": "PLAIN"}}
    monkeypatch.setenv("MESSAGING_CONNECT_FILE", str(write(tmp_path, config)))
    with pytest.raises(ValueError, match="SASL PLAIN would send the password in cleartext"):
        amqscale.container.connect_options(None, 1, virtual_host=None, idle_timeout=0)
    config["sasl"]["allow_insecure"] = True  # type: ignore[index]
    write(tmp_path, config)
    _, options = amqscale.container.connect_options(None, 1, virtual_host=None,
                                                    idle_timeout=0)
    assert options["allow_insecure_mechanisms"] is True
    assert options["sasl_mechanisms"] == "PLAIN"


def test_explicit_arguments_win_over_the_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGING_CONNECT_FILE", str(write(
        tmp_path, {"scheme": "amqp", "user": "file-user", "password": "file-password"})))
    _, options = amqscale.container.connect_options(
        None, 1, virtual_host=None, idle_timeout=0, user="me", password="mine")
    assert (options["user"], options["password"]) == ("me", "mine")


# ---- where the file is looked for ----------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A temporary HOME and working directory, MESSAGING_CONNECT_FILE unset."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MESSAGING_CONNECT_FILE", raising=False)
    monkeypatch.chdir(cwd)
    yield {"home": home / ".config" / "messaging", "cwd": cwd, "env": tmp_path / "env"}


def test_the_search_order(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert connect_config_paths() == [
        Path("connect.json"), places["home"] / "connect.json",
        Path("/etc/messaging/connect.json")]
    write(places["home"], {"scheme": "amqp", "host": "from-home"})
    assert load_connect_config()["url"] == "amqp://from-home:5672"
    write(places["cwd"], {"scheme": "amqp", "host": "from-cwd"})
    assert load_connect_config()["url"] == "amqp://from-cwd:5672"  # ./ before ~
    env = write(places["env"], {"scheme": "amqp", "host": "from-env"}, "mine.json")
    monkeypatch.setenv("MESSAGING_CONNECT_FILE", str(env))
    assert connect_config_paths() == [env]
    assert load_connect_config()["url"] == "amqp://from-env:5672"  # the variable first


def test_a_variable_naming_a_missing_file_does_not_fall_back(
        places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    write(places["cwd"], {"scheme": "amqp", "host": "from-cwd"})
    monkeypatch.setenv("MESSAGING_CONNECT_FILE", str(places["env"] / "missing.json"))
    with pytest.raises(FileNotFoundError, match="MESSAGING_CONNECT_FILE names .*missing.json"):
        load_connect_config()


def test_an_empty_variable_is_unset(places: dict[str, Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write(places["cwd"], {"scheme": "amqp", "host": "from-cwd"})
    monkeypatch.setenv("MESSAGING_CONNECT_FILE", "")
    assert load_connect_config()["url"] == "amqp://from-cwd:5672"


def test_no_file_at_all_says_where_it_looked(places: dict[str, Path]) -> None:
    if Path("/etc/messaging/connect.json").exists():
        pytest.skip("this machine has an /etc/messaging/connect.json")
    with pytest.raises(FileNotFoundError, match="no URL given and no connection "
                       r"configuration file: looked at connect.json, .*home.*, "
                       "/etc/messaging/connect.json"):
        load_connect_config()


# ---- connect() with no URL, against RabbitMQ --------------------------------------------------


@pytest.fixture(scope="module")
def container() -> Iterator[amqscale.Container]:
    with amqscale.Container(workers=1) as c:
        yield c


@pytest.fixture
def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """configure(config): the connection configuration file, as MESSAGING_CONNECT_FILE."""
    def configure(config: dict[str, Any]) -> Path:
        path = write(tmp_path / "config", config)
        monkeypatch.setenv("MESSAGING_CONNECT_FILE", str(path))
        return path
    return configure


def plain_over_amqp(rabbitmq: RabbitMQ, **sasl: Any) -> dict[str, Any]:
    return {"scheme": "amqp", "host": rabbitmq.host, "port": rabbitmq.port,
            "user": rabbitmq.user, "password": rabbitmq.password,
            "sasl": {"mechanisms": ["PLAIN"], **sasl}}


def over_tls(rabbitmq: RabbitMQ) -> dict[str, Any]:
    return {"host": "localhost", "port": rabbitmq.tls_port, "user": rabbitmq.user,
            "password": rabbitmq.password, "tls": {"ca": str(rabbitmq.ca_path)}}


def round_trip(conn: amqscale.Connection, address: str) -> None:
    assert conn.open_sender(address).send(b"configured").wait(TIMEOUT).accepted
    delivery = conn.open_receiver(address, credit=1).receive(timeout=TIMEOUT)
    assert delivery.message.body == b"configured"
    delivery.accept()


@pytest.mark.interop("connect.json", "rabbitmq")
@pytest.mark.interop("SASL PLAIN", "rabbitmq")
@pytest.mark.interop("send", "rabbitmq")
@pytest.mark.interop("receive", "rabbitmq")
def test_plain_over_amqp_with_allow_insecure_connects(
        container: amqscale.Container, rabbitmq: RabbitMQ, configure: Any,
        unique_name: str) -> None:
    configure(plain_over_amqp(rabbitmq, allow_insecure=True))
    conn = container.connect(timeout=TIMEOUT)
    try:
        assert conn.security.sasl_mechanism == "PLAIN"
        assert conn.security.user == rabbitmq.user
        assert conn.security.tls_protocol is None
        round_trip(conn, f"/queue/{unique_name}")
    finally:
        conn.close()


def test_plain_over_amqp_without_allow_insecure_is_refused(
        container: amqscale.Container, rabbitmq: RabbitMQ, configure: Any) -> None:
    # Documented default false; proton-python 0.40 sends PLAIN in cleartext here.
    configure(plain_over_amqp(rabbitmq))
    with pytest.raises(ValueError, match="SASL PLAIN would send the password in cleartext "
                       f"to amqp://{rabbitmq.host}:{rabbitmq.port}"):
        container.connect(timeout=TIMEOUT)
    configure(plain_over_amqp(rabbitmq, allow_insecure=False))
    with pytest.raises(ValueError, match="allow_insecure"):
        container.connect(timeout=TIMEOUT)
    config = plain_over_amqp(rabbitmq)
    del config["sasl"]  # no mechanism named: SCRAM (which RabbitMQ lacks), PLAIN held back
    configure(config)
    with pytest.raises(amqscale.AuthenticationError,
                       match="PLAIN is used only over TLS, or with allow_insecure"):
        container.connect(timeout=TIMEOUT)


@pytest.mark.interop("connect.json", "rabbitmq")
@pytest.mark.interop("TLS", "rabbitmq")
@pytest.mark.interop("SASL PLAIN", "rabbitmq")
@pytest.mark.interop("send", "rabbitmq")
@pytest.mark.interop("receive", "rabbitmq")
def test_the_tls_section_connects_over_tls(
        container: amqscale.Container, rabbitmq: RabbitMQ, configure: Any,
        unique_name: str) -> None:
    configure(over_tls(rabbitmq))  # scheme: the default, amqps
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verifying the server: nothing to warn of
        conn = container.connect(timeout=TIMEOUT)
    try:
        assert conn.security.tls_protocol is not None
        assert conn.security.sasl_mechanism == "PLAIN"  # over TLS: no allowance needed
        assert conn.security.user == rabbitmq.user
        round_trip(conn, f"/queue/{unique_name}")
    finally:
        conn.close()


def test_the_tls_section_without_its_ca_refuses_the_server(
        container: amqscale.Container, rabbitmq: RabbitMQ, configure: Any) -> None:
    config = over_tls(rabbitmq)
    del config["tls"]
    configure(config)  # amqps with the system's CAs: the test CA is not one of them
    with pytest.raises(amqscale.TLSError, match="certificate"):
        container.connect(timeout=TIMEOUT, reconnect=False)


@pytest.mark.interop("connect.json", "rabbitmq")
def test_the_asyncio_face_reads_it(rabbitmq: RabbitMQ, configure: Any,
                                   unique_name: str) -> None:
    configure(over_tls(rabbitmq))

    async def main() -> tuple[str | None, bytes]:
        async with aio.Container(workers=1) as client:
            conn = await client.connect(timeout=TIMEOUT)
            sender = await conn.open_sender(f"/queue/{unique_name}")
            await sender.send(b"configured", timeout=TIMEOUT)
            receiver = await conn.open_receiver(f"/queue/{unique_name}", credit=1)
            delivery = await receiver.receive(timeout=TIMEOUT)
            delivery.accept()
            return conn.security.tls_protocol, delivery.message.body

    protocol, body = asyncio.run(asyncio.wait_for(main(), 100))
    assert protocol is not None
    assert body == b"configured"


class ConfiguredHelloWorld(MessagingHandler):
    """proton's helloworld, its connect() given no URL: the configuration file's."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.seen: list[Any] = []

    def on_start(self, event: Any) -> None:
        conn = event.container.connect()
        event.container.create_receiver(conn, self.address)
        event.container.create_sender(conn, self.address)

    def on_connection_opened(self, event: Any) -> None:
        security = event.connection.security
        self.seen.append((security.sasl_mechanism, security.user))

    def on_sendable(self, event: Any) -> None:
        event.sender.send(Message(body="Hello World!"))
        event.sender.close()

    def on_message(self, event: Any) -> None:
        self.seen.append(event.message.body)
        event.connection.close()

    def on_transport_error(self, event: Any) -> None:
        self.seen.append(event.transport.error)


@pytest.mark.interop("connect.json", "rabbitmq")
def test_the_event_driven_face_reads_it(rabbitmq: RabbitMQ, configure: Any,
                                        unique_name: str) -> None:
    configure(plain_over_amqp(rabbitmq, allow_insecure=True))
    handler = ConfiguredHelloWorld(f"/queue/{unique_name}")
    reactor.Container(handler, workers=1).run()
    assert handler.seen == [("PLAIN", rabbitmq.user), "Hello World!"]


def test_the_event_driven_face_refuses_plain_without_allow_insecure(
        rabbitmq: RabbitMQ, configure: Any, unique_name: str) -> None:
    configure(plain_over_amqp(rabbitmq))
    with pytest.raises(ValueError, match="SASL PLAIN would send the password in cleartext"):
        reactor.Container(ConfiguredHelloWorld(unique_name), workers=1).run()


def test_a_refused_certificate_is_explained_with_the_file_s_tls_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from amqscale.container import tls_in_use

    (tmp_path / "ca.pem").write_text("")  # it must exist (what it holds is not read here)
    path = tmp_path / "connect.json"
    path.write_text(json.dumps({"scheme": "amqps", "tls": {"ca": str(tmp_path / "ca.pem")}}))
    monkeypatch.setenv("MESSAGING_CONNECT_FILE", str(path))
    found = tls_in_use(None, None, None)
    assert found is not None and str(found.ca) == str(tmp_path / "ca.pem")
    given = amqscale.TLS(verify="peer")
    assert tls_in_use(given, None, None) is given  # an argument wins
    assert tls_in_use(None, "amqps://h", None) is None  # a URL given: not the file's
