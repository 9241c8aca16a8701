"""`python -m privet.gateway`: only Fleet API calls pass, and the signed-app registry speaks the
protocol Flower's SuperLink uses to fetch an app and its signature."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import requests

from privet import gateway
from privet.certs import make_ca, make_publisher_key, make_server_cert, sign_app
from privet.gateway import AppRegistry, FleetGateway, GatewayError, fleet_path_allowed, load_apps
from tests.federation import free_port
from tests.privet.test_certs import flower_accepts, make_fab


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v1/fleet/pull-messages", True),
        ("POST", "/v1/fleet/activate-node", True),
        ("GET", "/health", True),
        ("POST", "/v1/control/register-node", False),
        ("POST", "/v1/control/start-run", False),
        ("POST", "/v1/runtime/pull-task-input", False),
        ("POST", "/v1/fleet/../control/start-run", False),
        ("POST", "/v1/fleet/", False),
        ("GET", "/v1/fleet/pull-messages", False),
        ("GET", "/docs", False),
        ("GET", "/openapi.json", False),
    ],
)
def test_only_fleet_calls_pass(method, path, allowed):
    assert fleet_path_allowed(method, path) is allowed


def test_a_control_call_gets_403_and_never_reaches_the_superlink(tmp_path, caplog):
    sent = []

    async def send(event):
        sent.append(event)

    async def receive():
        raise AssertionError("a refused request's body is never read")

    app = FleetGateway("127.0.0.1:1", tmp_path / "ca.crt")  # nothing listens: nothing is sent
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/control/start-run",
        "headers": [],
        "query_string": b"",
        "client": ("10.0.0.9", 5555),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 403
    assert b"only the Fleet API (/v1/fleet/) is served on this address" in sent[1]["body"]
    assert "refused POST '/v1/control/start-run' from 10.0.0.9" in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9092", ("127.0.0.1", 9092)), ("[::1]:80", ("::1", 80)), ("h.example:1", None)],
)
def test_addresses(text, expected):
    assert gateway.parse_address(text, "--fleet") == (expected or ("h.example", 1))
    with pytest.raises(GatewayError, match="--fleet '9092' must be HOST:PORT"):
        gateway.parse_address("9092", "--fleet")
    with pytest.raises(GatewayError, match="the port must be between 1 and 65535"):
        gateway.parse_address("x:70000", "--fleet")


@pytest.fixture
def signed(tmp_path):
    publisher = make_publisher_key(tmp_path / "publisher")
    for version in ("0.1.0", "0.2.0"):
        fab = make_fab(tmp_path / f"privet-{version}.fab", version=version)
        sign_app(fab, tmp_path / "publisher", tmp_path / "apps")
    return tmp_path / "apps", publisher


def test_the_registry_serves_what_flowers_superlink_fetches(signed):
    from flwr.supercore.utils import request_download_link
    from flwr.superlink.servicer.control.control_handlers import _format_verification

    apps, publisher = signed
    port = free_port()
    server = gateway.start_registry("127.0.0.1", port, AppRegistry(load_apps(apps)))
    try:
        url = f"http://127.0.0.1:{port}/hub/fetch-fab"  # FLWR_SUPERGRID_API_URL + /hub/fetch-fab
        fab_url, verifications, _ = request_download_link("@privet/privet", "0.1.0", url, "fab_url")
        fab = requests.get(fab_url, timeout=10).content
        assert fab == (apps / "privet-0.1.0.fab").read_bytes()
        assert flower_accepts(fab, _format_verification(verifications), publisher.trusted_entities)
        latest, _, _ = request_download_link("@privet/privet", None, url, "fab_url")
        digest = hashlib.sha256((apps / "privet-0.2.0.fab").read_bytes()).hexdigest()
        assert latest.endswith(f"/fab/{digest}")
        with pytest.raises(ValueError, match="@rogue/evil not found"):
            request_download_link("@rogue/evil", "1.0.0", url, "fab_url")
        assert (
            requests.get(f"http://127.0.0.1:{port}/fab/{'0' * 64}", timeout=10).status_code == 404
        )
        assert requests.post(url, data=b"junk", timeout=10).status_code == 400
    finally:
        server.shutdown()


def test_gateway_settings_errors_are_one_line(tmp_path, signed, capsys):
    apps, _ = signed
    make_ca(tmp_path / "ca")
    make_server_cert(tmp_path / "ca", tmp_path / "tls", ["127.0.0.1"])
    base = ["--superlink", "127.0.0.1:9093", "--fleet", "127.0.0.1:1"]
    cases = [
        ([*base, "--tls", str(tmp_path / "ca")], "has no server.crt; make it with"),
        (
            [*base, "--tls", str(tmp_path / "tls"), "--apps", str(apps)],
            "give --registry and --apps",
        ),
        (
            [*base, "--tls", str(tmp_path / "tls"), "--registry", "0.0.0.0:1", "--apps", str(apps)],
            "bind it to 127.0.0.1",
        ),
        (
            [*base, "--tls", str(tmp_path / "tls"), "--registry", "127.0.0.1:1"]
            + ["--apps", str(tmp_path / "ca")],
            "holds no signed app; run 'privet certs sign' first",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exited:
            gateway.main(argv)
        assert exited.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines


def test_a_tampered_app_is_not_served(signed):
    apps, _ = signed
    other = make_fab(apps / "x.zip", version="0.2.0", extra=b"x")
    (apps / "privet-0.2.0.fab").write_bytes(other.read_bytes())
    with pytest.raises(GatewayError, match=r"privet-0\.2\.0\.fab is not the FAB .* signed"):
        load_apps(apps)


def test_a_fleet_call_is_forwarded_whole_with_the_callers_true_address(tmp_path):
    import httpx

    seen = {}

    def superlink(request: httpx.Request) -> httpx.Response:
        seen.update(url=str(request.url), body=request.read(), headers=request.headers)
        return httpx.Response(
            200, stream=httpx.ByteStream(b"\x08\x01reply"), headers={"x-flwr": "1"}
        )

    app = FleetGateway("127.0.0.1:9093", tmp_path / "ca.crt")
    app._client = httpx.AsyncClient(  # stands in for the SuperLink's HTTPS endpoint
        base_url="https://127.0.0.1:9093", transport=httpx.MockTransport(superlink)
    )
    sent, parts = [], [b"\x0a\x02", b"ab"]

    async def receive():
        chunk = parts.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    async def send(event):
        sent.append(event)

    headers = [
        (b"flwr-signature", b"c2ln"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"content-length", b"4"),
        (b"host", b"gateway.example"),
    ]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/fleet/pull-messages",
        "headers": headers,
        "query_string": b"",
        "client": ("10.0.0.7", 4242),
    }
    asyncio.run(app(scope, receive, send))
    assert seen["url"] == "https://127.0.0.1:9093/v1/fleet/pull-messages"
    assert seen["body"] == b"\x0a\x02ab"
    assert seen["headers"]["flwr-signature"] == "c2ln"
    assert seen["headers"]["x-forwarded-for"] == "10.0.0.7"  # not the 6.6.6.6 it claimed
    assert seen["headers"]["host"] == "127.0.0.1:9093"
    assert sent[0]["status"] == 200 and (b"x-flwr", b"1") in sent[0]["headers"]
    assert b"".join(e.get("body", b"") for e in sent[1:]) == b"\x08\x01reply"
