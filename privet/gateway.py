"""The coordinator's front door: only the Fleet API on the network, and the signed apps.

Flower 1.42's SuperLink serves its Fleet API (what SuperNodes call), its Control API (`flwr`
commands: register nodes, start runs, read logs) and its Runtime API (the ServerApp's) on one
HTTP(S) port; `--control-api-address` and `--fleet-api-address` are deprecated and bind nothing.
Whoever reaches that port and trusts the CA certificate could register nodes and start runs. So
the secure recipe binds the SuperLink to the coordinator's own host (`--host 127.0.0.1`) and runs
this gateway beside it:

- **Fleet gateway** (`--fleet HOST:PORT`, the address partners' SuperNodes use): TLS with the
  SuperLink's own certificate, forwards `POST /v1/fleet/...` (and `GET /health`) to the SuperLink,
  and refuses every other path with 403 and a one-line reason. Node authentication is untouched:
  the SuperLink still checks every Fleet request's signature.
- **App registry** (`--registry 127.0.0.1:PORT --apps DIR`, optional): serves the FABs signed with
  `privet certs sign` to the SuperLink in Flower Hub's protocol (`POST /hub/fetch-fab`, then the
  FAB), so the SuperLink attaches the coordinator's signature to a run started with
  `flwr run @privet/privet==VERSION`, and SuperNodes started with `--trusted-entities` verify it.
  Flower 1.42 attaches signatures only to apps from a registry: a FAB uploaded by `flwr run ./app`
  carries none and such nodes refuse it. The SuperLink finds the registry through the environment
  variable `FLWR_SUPERGRID_API_URL=http://127.0.0.1:PORT`. The registry needs no TLS: it listens on
  the loopback address only, and nodes check the signature, not the transport.

Run it with `python -m privet.gateway --superlink 127.0.0.1:9093 --tls superlink-tls --fleet
0.0.0.0:9092 [--registry 127.0.0.1:9095 --apps signed-apps]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from privet.certs import (
    CA_CERT_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    SIGNATURE_SUFFIX,
    CertError,
    SignedApp,
    load_signed_app,
)

__all__ = [
    "AppRegistry",
    "FleetGateway",
    "GatewayError",
    "fleet_path_allowed",
    "load_apps",
    "main",
    "parse_address",
]

logger = logging.getLogger("privet.gateway")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

FLEET_PATH = re.compile(r"^/v1/fleet/[a-z0-9-]{1,64}$")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        # Set by the gateway itself (the SuperLink's uvicorn trusts them from 127.0.0.1), never
        # passed on from the network, so nobody can pose as another address in its logs.
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    }
)
REFUSED = (
    "privet gateway: only the Fleet API (/v1/fleet/) is served on this address; the Control API "
    "is reachable on the coordinator's host only"
)
MAX_REGISTRY_REQUEST = 64 * 1024
UPSTREAM_TIMEOUT = 120.0  # seconds for one Fleet call; Flower's own client gives up after 30


class GatewayError(ValueError):
    """A gateway setting that cannot work (bad address, missing TLS files, bad signed app)."""


def parse_address(text: str, option: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) as (host, port); GatewayError naming `option` otherwise."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text.strip())
    if not match:
        raise GatewayError(f"{option} {text!r} must be HOST:PORT, e.g. 127.0.0.1:9092")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise GatewayError(f"{option} {text!r}: the port must be between 1 and 65535")
    return host, port


def fleet_path_allowed(method: str, path: str) -> bool:
    """Whether the gateway forwards a request: Fleet API calls and the health check only."""
    return (method == "POST" and FLEET_PATH.match(path) is not None) or (
        method == "GET" and path == "/health"
    )


def _printable(text: str, limit: int = 120) -> str:
    """Attacker-chosen text, safe for one log line."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


# -- the Fleet gateway (ASGI) ---------------------------------------------------------------------


class FleetGateway:
    """An ASGI app that forwards Fleet API calls to the SuperLink and refuses everything else."""

    def __init__(self, upstream: str, ca_cert: Path, timeout: float = UPSTREAM_TIMEOUT) -> None:
        self.upstream = upstream
        self.ca_cert = ca_cert
        self.timeout = timeout
        self._client: Any = None  # an httpx.AsyncClient, made in the server's event loop

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            context = ssl.create_default_context(cafile=str(self.ca_cert))
            self._client = httpx.AsyncClient(
                base_url=f"https://{self.upstream}",
                verify=context,
                timeout=httpx.Timeout(self.timeout, connect=10.0),
                follow_redirects=False,
            )
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if not fleet_path_allowed(method, path):
            client = scope.get("client") or ("?", 0)
            logger.warning("refused %s %s from %s", method, _printable(path), client[0])
            await _reply(send, 403, REFUSED)
            return
        await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        import httpx

        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        client_address = (scope.get("client") or ("unknown", 0))[0]
        headers += [("x-forwarded-for", client_address), ("x-forwarded-proto", "https")]

        async def body() -> AsyncIterator[bytes]:
            while True:
                event = await receive()
                if event["type"] == "http.disconnect":
                    return
                if chunk := event.get("body", b""):
                    yield chunk
                if not event.get("more_body", False):
                    return

        url = scope["path"] + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        client = self._http()
        request = client.build_request(scope["method"], url, headers=headers, content=body())
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as error:
            logger.warning("the SuperLink at %s did not answer: %s", self.upstream, error)
            await _reply(send, 502, f"privet gateway: the SuperLink is not reachable ({error})")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name, value)
                        for name, value in response.headers.raw
                        if name.decode("latin-1").lower() not in HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _reply(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- the app registry (loopback HTTP, Flower Hub's fetch protocol) -------------------------------


@dataclass(frozen=True)
class _Entry:
    app: SignedApp
    fab: bytes


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def load_apps(folder: Path) -> dict[str, _Entry]:
    """Every signed app in `folder`, by SHA-256; each signature is checked before it is served."""
    if not folder.is_dir():
        raise GatewayError(f"--apps {folder} is not a folder; sign an app with 'privet certs sign'")
    entries: dict[str, _Entry] = {}
    seen: dict[tuple[str, str], Path] = {}
    for record in sorted(folder.glob(f"*{SIGNATURE_SUFFIX}")):
        try:
            app, fab = load_signed_app(record)
        except CertError as error:
            raise GatewayError(str(error)) from None
        key = (app.app_id, app.version)
        if key in seen and seen[key] != app.fab:
            raise GatewayError(
                f"{record} and {seen[key]} both sign {app.app_id}=={app.version}; keep one"
            )
        seen[key] = app.fab
        entries[app.sha256] = _Entry(app, fab)
    if not entries:
        raise GatewayError(f"--apps {folder} holds no signed app; run 'privet certs sign' first")
    return entries


class AppRegistry:
    """Finds the FAB a SuperLink asks for, and its signature record."""

    def __init__(self, entries: dict[str, _Entry]) -> None:
        self.entries = entries

    def find(self, app_id: str, version: str | None) -> _Entry | None:
        """The app of that id and version; without a version, its highest version."""
        matches = [
            e
            for e in self.entries.values()
            if e.app.app_id == app_id and (version is None or e.app.version == version)
        ]
        return max(matches, key=lambda e: _version_key(e.app.version), default=None)

    def fetch(self, body: bytes, host: str) -> tuple[int, dict[str, Any]]:
        """The answer to `POST /hub/fetch-fab`: status and JSON, as Flower Hub gives them."""
        try:
            request = json.loads(body)
            app_id = str(request["app_id"])
            version = request.get("app_version")
            version = None if version is None else str(version)
        except (ValueError, KeyError, TypeError):
            return 400, {"detail": "expected JSON with app_id and app_version"}
        entry = self.find(app_id, version)
        if entry is None:
            known = sorted(f"{e.app.app_id}=={e.app.version}" for e in self.entries.values())
            logger.warning("no signed app %s==%s (signed: %s)", app_id, version, ", ".join(known))
            return 404, {"detail": f"no signed app {app_id}=={version}"}
        logger.info("serving %s==%s", entry.app.app_id, entry.app.version)
        return 200, {
            "fab_url": f"http://{host}/fab/{entry.app.sha256}",
            "verifications": [entry.app.verification()],
        }


def _registry_handler(registry: AppRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "privet-registry"

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict[str, Any]) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/hub/fetch-fab":
                self._json(404, {"detail": "not found"})
                return
            try:
                length = int(self.headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_REGISTRY_REQUEST:
                self._json(400, {"detail": "bad content-length"})
                return
            address = self.server.server_address  # (host, port, ...) for a TCP server
            if not isinstance(address, tuple):
                raise TypeError(f"the registry serves over TCP, not at {address!r}")
            host = self.headers.get("host") or f"{address[0]}:{address[1]}"
            status, data = registry.fetch(self.rfile.read(length), host)
            self._json(status, data)

        def do_GET(self) -> None:  # noqa: N802
            digest = self.path.removeprefix("/fab/")
            entry = registry.entries.get(digest) if self.path.startswith("/fab/") else None
            if entry is None:
                self._json(404, {"detail": "not found"})
                return
            self._send(200, entry.fab, "application/octet-stream")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.info("registry: %s", format % args)

    return Handler


def start_registry(host: str, port: int, registry: AppRegistry) -> ThreadingHTTPServer:
    """Serve the registry on host:port from a daemon thread; returns the server (shutdown())."""
    try:
        server = ThreadingHTTPServer((host, port), _registry_handler(registry))
    except OSError as error:
        raise GatewayError(f"--registry {host}:{port}: {error.strerror}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="privet-registry", daemon=True).start()
    return server


# -- the command ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m privet.gateway",
        description=(
            "Expose only the SuperLink's Fleet API on the network (the SuperLink itself listens "
            "on the coordinator's host), and serve signed apps to the SuperLink."
        ),
    )
    parser.add_argument(
        "--superlink",
        required=True,
        metavar="HOST:PORT",
        help="the SuperLink's own address (flower-superlink --host/--port), e.g. 127.0.0.1:9093",
    )
    parser.add_argument(
        "--tls",
        required=True,
        metavar="DIR",
        help="folder with server.crt, server.key and ca.crt (privet certs server --out)",
    )
    parser.add_argument(
        "--fleet",
        required=True,
        metavar="HOST:PORT",
        help="where SuperNodes connect (flower-supernode --superlink), e.g. 0.0.0.0:9092",
    )
    parser.add_argument(
        "--registry",
        metavar="HOST:PORT",
        help="loopback address of the app registry (the SuperLink's FLWR_SUPERGRID_API_URL)",
    )
    parser.add_argument("--apps", metavar="DIR", help="folder of apps signed by privet certs sign")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway (and the registry) until SIGINT or SIGTERM."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # uvicorn's access log has each call
    try:
        parse_address(args.superlink, "--superlink")
        fleet_host, fleet_port = parse_address(args.fleet, "--fleet")
        tls = Path(args.tls)
        for name in (SERVER_CERT_FILE, SERVER_KEY_FILE, CA_CERT_FILE):
            if not (tls / name).is_file():
                raise GatewayError(
                    f"--tls {tls} has no {name}; make it with 'privet certs server --out {tls}'"
                )
        if (args.registry is None) != (args.apps is None):
            raise GatewayError("give --registry and --apps together, or neither")
        registry = None
        if args.registry is not None:
            host, port = parse_address(args.registry, "--registry")
            if host not in ("127.0.0.1", "::1", "localhost"):
                raise GatewayError(
                    f"--registry {args.registry}: bind it to 127.0.0.1 (only the SuperLink on "
                    "this host reads it)"
                )
            entries = load_apps(Path(args.apps))
            registry = start_registry(host, port, AppRegistry(entries))
            for entry in entries.values():
                logger.info(
                    "signed app %s==%s (sha256 %s, key %s)",
                    entry.app.app_id,
                    entry.app.version,
                    entry.app.sha256[:16],
                    entry.app.public_key_id,
                )
            logger.info("app registry on http://%s:%d", host, port)
    except GatewayError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    import uvicorn

    config = uvicorn.Config(
        FleetGateway(args.superlink, tls / CA_CERT_FILE),
        host=fleet_host,
        port=fleet_port,
        ssl_certfile=str(tls / SERVER_CERT_FILE),
        ssl_keyfile=str(tls / SERVER_KEY_FILE),
        log_level="info",
        access_log=True,
        lifespan="on",
        proxy_headers=False,  # the gateway is the edge: the address it logs is the peer's own
    )
    logger.info(
        "Fleet gateway on https://%s:%d -> https://%s", fleet_host, fleet_port, args.superlink
    )
    try:
        server = uvicorn.Server(config)
        asyncio.run(server.serve())
        if not server.started:
            return 1
    finally:
        if registry is not None:
            with contextlib.suppress(Exception):
                registry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
