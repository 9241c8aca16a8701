"""`privet certs`: the files verify as X.509 says, Flower's own loaders accept them, and a real
SuperLink with TLS + node authentication lets in a registered SuperNode and no one else."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from privet import certs, cli
from privet.certs import (
    CertError,
    add_certs_parser,
    load_signed_app,
    make_ca,
    make_node_keys,
    make_publisher_key,
    make_server_cert,
    parse_host,
    public_key_fingerprint,
    run_certs,
    sign_app,
    signed_message,
)
from tests.federation import free_port, stop
from tests.privet.test_cli import one_line_error

BIN = Path(sys.executable).parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca_dir(tmp_path) -> Path:
    make_ca(tmp_path / "ca")
    return tmp_path / "ca"


# -- the certificate authority ------------------------------------------------------------------


def test_ca_is_a_self_signed_ca_with_a_private_key_file(tmp_path):
    files = make_ca(tmp_path / "ca", name="Test federation", days=30)
    assert (files.cert, files.key) == (tmp_path / "ca/ca.crt", tmp_path / "ca/ca.key")
    cert = load_cert(files.cert)
    cert.verify_directly_issued_by(cert)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == (
        "Test federation"
    )
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP384R1 | ec.SECP256R1)
    assert key.public_key() == cert.public_key()
    assert mode(files.key) == 0o600
    assert mode(files.cert) == 0o644
    assert mode(files.key.parent) == 0o700  # a folder privet created for a private key
    assert sorted(p.name for p in files.key.parent.iterdir()) == ["ca.crt", "ca.key"]


def test_existing_ca_is_kept_unless_overwrite(ca_dir):
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    with pytest.raises(CertError, match=r"ca\.key already exists; pass --overwrite"):
        make_ca(ca_dir)
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before
    make_ca(ca_dir, overwrite=True)
    after = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    assert after.keys() == before.keys() and after["ca.key"] != before["ca.key"]
    assert mode(ca_dir / "ca.key") == 0o600


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 0}, "--days must be a positive number"),
        ({"days": -3}, "--days must be a positive number"),
        ({"days": 99_999_999}, "--days must be at most 36500"),  # overflowed the date before
        ({"name": " "}, "--name must be 1 to 64 printable characters"),
        ({"name": "x" * 65}, "--name must be 1 to 64 printable characters"),
    ],
)
def test_bad_ca_settings_write_nothing(tmp_path, kwargs, message):
    with pytest.raises(CertError, match=message):
        make_ca(tmp_path / "ca", **kwargs)
    assert not (tmp_path / "ca").exists()


# -- the server certificate ---------------------------------------------------------------------


def test_server_certificate_verifies_against_the_ca_for_every_host(ca_dir, tmp_path):
    files = make_server_cert(ca_dir, tmp_path / "tls", ["127.0.0.1", "localhost", "::1"])
    ca = load_cert(ca_dir / "ca.crt")
    cert = load_cert(files.cert)
    cert.verify_directly_issued_by(ca)
    assert files.hosts == ("127.0.0.1", "localhost", "::1")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    assert files.ca_cert.read_bytes() == (ca_dir / "ca.crt").read_bytes()
    assert mode(files.key) == 0o600
    assert mode(files.cert) == mode(files.ca_cert) == 0o644

    # Full RFC 5280 path validation, as a TLS client does it: every listed host, and only those.
    store = verification.Store([ca])
    for subject in (
        x509.DNSName("localhost"),
        x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
        x509.IPAddress(__import__("ipaddress").ip_address("::1")),
    ):
        verifier = verification.PolicyBuilder().store(store).build_server_verifier(subject)
        assert verifier.verify(cert, []) == [cert, ca]
    stranger = (
        verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName("example.com"))
    )
    with pytest.raises(verification.VerificationError):
        stranger.verify(cert, [])
    other_ca = make_ca(tmp_path / "other")
    foreign = (
        verification.PolicyBuilder()
        .store(verification.Store([load_cert(other_ca.cert)]))
        .build_server_verifier(x509.DNSName("localhost"))
    )
    with pytest.raises(verification.VerificationError):
        foreign.verify(cert, [])


def test_python_ssl_accepts_the_files(ca_dir, tmp_path):
    """A TLS handshake with Python's ssl (what uvicorn and httpx use) on 127.0.0.1."""
    files = make_server_cert(ca_dir, tmp_path / "tls", ["127.0.0.1"])
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)
    client_context = ssl.create_default_context(cafile=files.ca_cert)
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        raw, _ = listener.accept()
        client.setblocking(False)
        raw.setblocking(False)
        tls_client = client_context.wrap_socket(
            client, server_hostname="127.0.0.1", do_handshake_on_connect=False
        )
        tls_server = server_context.wrap_socket(
            raw, server_side=True, do_handshake_on_connect=False
        )
        done = {"client": False, "server": False}
        deadline = time.monotonic() + 10
        while not all(done.values()):
            assert time.monotonic() < deadline, "TLS handshake did not finish"
            for name, sock in (("client", tls_client), ("server", tls_server)):
                if done[name]:
                    continue
                try:
                    sock.do_handshake()
                    done[name] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
        peer = tls_client.getpeercert()
        assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
        tls_client.close()
        tls_server.close()


def test_server_certificate_in_the_ca_folder_keeps_its_ca_crt(ca_dir):
    files = make_server_cert(ca_dir, ca_dir, ["localhost"])
    assert files.ca_cert == ca_dir / "ca.crt"
    load_cert(files.cert).verify_directly_issued_by(load_cert(files.ca_cert))


def test_existing_server_files_are_kept_and_nothing_half_written(ca_dir, tmp_path):
    out = tmp_path / "tls"
    out.mkdir()
    (out / "server.crt").write_text("old")
    with pytest.raises(CertError, match=r"server\.crt already exists; pass --overwrite"):
        make_server_cert(ca_dir, out, ["127.0.0.1"])
    assert [p.name for p in out.iterdir()] == ["server.crt"]
    assert (out / "server.crt").read_text() == "old"
    make_server_cert(ca_dir, out, ["127.0.0.1"], overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.crt",
        "server.crt",
        "server.key",
    ]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))),
        ("[::1]", x509.IPAddress(__import__("ipaddress").ip_address("::1"))),
        ("Link.Example.ORG.", x509.DNSName("link.example.org")),
        ("superlink-1", x509.DNSName("superlink-1")),
        ("xn--bcher-kva.example", x509.DNSName("xn--bcher-kva.example")),
    ],
)
def test_hosts_become_ip_or_dns_entries(host, expected):
    assert parse_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:9092",
        "https://link.example.org",
        "-link.example.org",
        "link..example.org",
        "300.1.1.1",
        "",
        "link example.org",
        "*.example.org",
        "bücher.example",
        "a" * 64 + ".example",
    ],
)
def test_invalid_hosts_are_refused_before_anything_is_written(ca_dir, tmp_path, host):
    with pytest.raises(CertError, match="is neither an IP address nor a valid DNS name"):
        make_server_cert(ca_dir, tmp_path / "tls", ["localhost", host])
    assert not (tmp_path / "tls").exists()


def test_unreadable_or_invalid_ca_files_are_refused(tmp_path, ca_dir):
    with pytest.raises(CertError, match=r"cannot read the CA in .*No such file.*privet certs ca"):
        make_server_cert(tmp_path / "missing", tmp_path / "tls", ["localhost"])

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "ca.crt").write_text("not a certificate")
    (garbage / "ca.key").write_bytes((ca_dir / "ca.key").read_bytes())
    with pytest.raises(CertError, match=r"ca\.crt is not a PEM certificate"):
        make_server_cert(garbage, tmp_path / "tls", ["localhost"])

    mismatch = tmp_path / "mismatch"
    make_ca(mismatch)
    (mismatch / "ca.key").write_bytes((ca_dir / "ca.key").read_bytes())
    with pytest.raises(CertError, match=r"ca\.key is not the key of .*ca\.crt"):
        make_server_cert(mismatch, tmp_path / "tls", ["localhost"])

    bad_key = tmp_path / "bad-key"
    make_ca(bad_key)
    (bad_key / "ca.key").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(CertError, match=r"ca\.key is not a PEM private key"):
        make_server_cert(bad_key, tmp_path / "tls", ["localhost"])

    leaf = make_server_cert(ca_dir, tmp_path / "leaf", ["localhost"])
    not_ca = tmp_path / "not-ca"
    not_ca.mkdir()
    (not_ca / "ca.crt").write_bytes(leaf.cert.read_bytes())
    (not_ca / "ca.key").write_bytes(leaf.key.read_bytes())
    with pytest.raises(CertError, match="is not a CA certificate"):
        make_server_cert(not_ca, tmp_path / "tls", ["localhost"])
    assert not (tmp_path / "tls").exists()


def test_server_certificate_cannot_outlive_its_ca(tmp_path):
    make_ca(tmp_path / "ca", days=10)
    files = make_server_cert(tmp_path / "ca", tmp_path / "short", ["localhost"])
    ca, cert = load_cert(tmp_path / "ca/ca.crt"), load_cert(files.cert)
    assert cert.not_valid_after_utc == ca.not_valid_after_utc  # default 825 days, cut to the CA's
    with pytest.raises(CertError, match=r"the CA expires on .* pass --days 9 or less"):
        make_server_cert(tmp_path / "ca", tmp_path / "tls", ["localhost"], days=11)
    assert not (tmp_path / "tls").exists()


def test_unwritable_folder_is_one_error_and_leaves_nothing(ca_dir, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(CertError, match=r"cannot write to folder .*tls: Permission denied"):
        make_server_cert(ca_dir, tmp_path / "tls", ["localhost"])
    assert not (tmp_path / "tls").exists()  # the folder privet made is taken back
    monkeypatch.undo()

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CertError, match=r"cannot create folder .*a-file/keys: Not a directory"):
        make_node_keys(blocker / "keys")
    with pytest.raises(CertError, match=r"a-file is not a folder"):
        make_node_keys(blocker)

    if os.geteuid() != 0:  # root writes anywhere: the monkeypatched case above stands in for it
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(CertError, match="cannot write to folder"):
            make_ca(locked)
        assert list(locked.iterdir()) == []


def test_failure_while_placing_files_takes_back_the_ones_placed(ca_dir, tmp_path, monkeypatch):
    real_replace = os.replace
    calls = []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(certs.os, "replace", replace_once)
    out = tmp_path / "tls"
    out.mkdir()
    with pytest.raises(CertError, match="No space left on device"):
        make_server_cert(ca_dir, out, ["localhost"])
    assert list(out.iterdir()) == []  # neither the placed key nor any temporary file


# -- SuperNode keys -----------------------------------------------------------------------------


def test_node_keys_are_what_flower_reads(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    files = make_node_keys(tmp_path / "node")
    assert (files.private_key, files.public_key) == (
        tmp_path / "node/node.key",
        tmp_path / "node/node.pub",
    )
    assert mode(files.private_key) == 0o600
    assert mode(files.public_key) == 0o644
    assert files.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert files.public_key.read_bytes().startswith(b"ecdsa-sha2-nistp384 ")

    # Flower's own loaders: `flower-supernode --auth-supernode-private-key` and
    # `flwr supernode register PUBLIC_KEY`.
    private, public = _try_setup_client_authentication(
        argparse.Namespace(
            auth_supernode_private_key=str(files.private_key), auth_supernode_public_key=None
        )
    )
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert try_load_public_key(files.public_key) == public_key_to_bytes(public)
    assert files.fingerprint == public_key_fingerprint(files.public_key.read_bytes())
    assert files.fingerprint.startswith("SHA256:") and len(files.fingerprint) == 50


def test_node_keys_differ_and_are_kept_unless_overwrite(tmp_path):
    first = make_node_keys(tmp_path, name="site-a")
    second = make_node_keys(tmp_path, name="site-b")
    assert first.public_key.read_bytes() != second.public_key.read_bytes()
    before = first.private_key.read_bytes()
    with pytest.raises(CertError, match=r"site-a\.key already exists; pass --overwrite"):
        make_node_keys(tmp_path, name="site-a")
    assert first.private_key.read_bytes() == before
    with pytest.raises(CertError, match="--name '../x' must be a file name"):
        make_node_keys(tmp_path, name="../x")


# -- app signing: what Flower's SuperNode verifies with --trusted-entities -----------------------


def make_fab(path: Path, publisher="privet", name="privet", version="0.1.0", extra=b"") -> Path:
    """A minimal Flower app bundle: a zip with the app's pyproject.toml."""
    pyproject = (
        f'[project]\nname = "{name}"\nversion = "{version}"\n\n'
        f'[tool.flwr.app]\npublisher = "{publisher}"\n'
    )
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("pyproject.toml", pyproject)
        bundle.writestr("client/app.py", b"print('hello')\n" + extra)
    return path


def superlink_verifications(app) -> dict[str, str]:
    """What Flower's SuperLink attaches to a FAB whose registry sent this signature."""
    from flwr.superlink.servicer.control.control_handlers import _format_verification

    # As the registry's JSON carries it: signed_at stays a number (Flower's hub does the same).
    return _format_verification([json.loads(json.dumps(app.verification()))])


def flower_accepts(fab: bytes, verifications: dict[str, str], trusted: Path) -> bool:
    """Flower 1.42's own check in the SuperNode (flower-supernode --trusted-entities FILE)."""
    from flwr.supercore.fab import Fab
    from flwr.supernode.cli.flower_supernode import (
        _try_obtain_trusted_entities,
        _validate_public_keys_ed25519,
    )
    from flwr.supernode.start_client_internal import _verify_fab

    entities = _try_obtain_trusted_entities(trusted)
    _validate_public_keys_ed25519(entities)
    fab_hash = hashlib.sha256(fab).hexdigest()
    return _verify_fab(Fab(fab_hash, fab, verifications), entities)


def test_publisher_key_and_trusted_entities_are_what_flower_reads(tmp_path):
    files = make_publisher_key(tmp_path / "publisher")
    assert mode(files.private_key) == 0o600
    assert mode(files.public_key) == mode(files.trusted_entities) == 0o644
    key = serialization.load_ssh_private_key(files.private_key.read_bytes(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    from flwr.supernode.cli.flower_supernode import _try_obtain_trusted_entities

    entities = _try_obtain_trusted_entities(files.trusted_entities)
    assert list(entities) == [files.key_id] and files.key_id.startswith("privet-publisher-")
    assert entities[files.key_id] == files.public_key.read_text().strip()
    with pytest.raises(CertError, match="publisher.key already exists; pass --overwrite"):
        make_publisher_key(tmp_path / "publisher")


def test_a_signed_fab_passes_flowers_check_and_nothing_else_does(tmp_path):
    publisher = make_publisher_key(tmp_path / "publisher")
    other = make_publisher_key(tmp_path / "other")
    fab_path = make_fab(tmp_path / "privet.privet.0-1-0.fab")
    app = sign_app(fab_path, tmp_path / "publisher", tmp_path / "signed")
    assert (app.app_id, app.version) == ("@privet/privet", "0.1.0")
    assert app.fab.read_bytes() == fab_path.read_bytes()
    assert app.sha256 == hashlib.sha256(fab_path.read_bytes()).hexdigest()
    loaded, fab = load_signed_app(app.record)
    assert loaded == app and fab == fab_path.read_bytes()
    assert signed_message(fab, 7) == (7).to_bytes(8, "big") + hashlib.sha256(fab).digest()

    verifications = superlink_verifications(app)
    assert flower_accepts(fab, verifications, publisher.trusted_entities)
    # Another publisher's nodes refuse it; a changed FAB or a FAB without a signature is refused.
    assert not flower_accepts(fab, verifications, other.trusted_entities)
    changed = make_fab(tmp_path / "changed.fab", extra=b"import os\n")
    assert not flower_accepts(changed.read_bytes(), verifications, publisher.trusted_entities)
    assert not flower_accepts(fab, {"valid_license": "Valid"}, publisher.trusted_entities)


def test_tampered_signed_apps_are_refused_by_name(tmp_path):
    make_publisher_key(tmp_path / "publisher")
    app = sign_app(make_fab(tmp_path / "a.fab"), tmp_path / "publisher", tmp_path / "signed")
    original = app.fab.read_bytes()
    make_fab(app.fab, extra=b"# changed\n")
    with pytest.raises(CertError, match=r"a\.fab is not the FAB .*a\.fab\.sig\.json signed"):
        load_signed_app(app.record)
    app.fab.write_bytes(original)
    record = json.loads(app.record.read_text())
    record["signed_at"] += 1
    app.record.write_text(json.dumps(record))
    with pytest.raises(CertError, match="the signature does not verify; sign the FAB again"):
        load_signed_app(app.record)
    app.record.write_text("{}")
    with pytest.raises(CertError, match="is not a signature record written by 'privet certs sign'"):
        load_signed_app(app.record)
    app.fab.unlink()
    sign_app(make_fab(tmp_path / "a.fab"), tmp_path / "publisher", tmp_path / "signed", True)
    app.fab.unlink()
    with pytest.raises(CertError, match=r"cannot read .*a\.fab: No such file"):
        load_signed_app(app.record)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not-a-zip", "is not a Flower app bundle; build one with 'flwr build"),
        ("no-publisher", "project.name, project.version or publisher missing"),
        ("bad-version", "version 1.0 is not what Flower's 'flwr run @publisher/name==x.y.z'"),
        ("no-key", r"cannot read .*publisher\.key: No such file .*privet certs publisher"),
    ],
)
def test_signing_errors_are_one_line(tmp_path, kind, message):
    if kind != "no-key":
        make_publisher_key(tmp_path / "publisher")
    fab = tmp_path / "x.fab"
    if kind == "not-a-zip":
        fab.write_text("hello")
    elif kind == "no-publisher":
        with zipfile.ZipFile(fab, "w") as bundle:
            bundle.writestr("pyproject.toml", '[project]\nname = "x"\nversion = "1.0.0"\n')
    else:
        make_fab(fab, version="1.0" if kind == "bad-version" else "1.0.0")
    with pytest.raises(CertError, match=message):
        sign_app(fab, tmp_path / "publisher", tmp_path / "signed")
    assert not (tmp_path / "signed").exists()


def test_publisher_and_sign_commands_say_what_comes_next(tmp_path, capsys):
    parse = certs_parser().parse_args
    assert run_certs(parse(["certs", "publisher", "--out", str(tmp_path / "pub")])) == 0
    out = capsys.readouterr().out
    assert "publisher.key (private, mode 0600" in out
    assert "flower-supernode --trusted-entities trusted-entities.yaml" in out
    fab = make_fab(tmp_path / "privet.fab")
    argv = ["certs", "sign", str(fab), "--publisher", str(tmp_path / "pub")]
    assert run_certs(parse([*argv, "--out", str(tmp_path / "apps")])) == 0
    out = capsys.readouterr().out
    assert "Signed @privet/privet==0.1.0" in out
    assert f"python -m privet.gateway ... --apps {tmp_path / 'apps'}" in out
    assert "flwr run @privet/privet==0.1.0 FEDERATION" in out


# -- the command line ---------------------------------------------------------------------------


def certs_parser() -> argparse.ArgumentParser:
    """`privet` with only the certs subcommand, built the way privet.cli builds its parser."""
    top = cli.OneLineParser(prog="privet")
    commands = top.add_subparsers(dest="command", required=True, parser_class=cli.OneLineParser)
    add_certs_parser(commands)
    return top


def test_commands_write_the_files_and_say_what_to_send(tmp_path, capsys):
    parse = certs_parser().parse_args
    assert run_certs(parse(["certs", "ca", "--out", str(tmp_path / "ca"), "--days", "90"])) == 0
    out = capsys.readouterr().out
    assert "ca.key (private, mode 0600" in out
    argv = ["certs", "server", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path / "tls")]
    argv += ["--host", "10.0.0.5", "--host", "link.example.org"]
    assert run_certs(parse(argv)) == 0
    out = capsys.readouterr().out
    assert "Certified hosts: 10.0.0.5, link.example.org" in out
    assert "--ssl-ca-certfile" in out
    assert run_certs(parse(["certs", "node", "--out", str(tmp_path / "node")])) == 0
    out = capsys.readouterr().out
    assert f"Send {tmp_path / 'node' / 'node.pub'} to the SuperLink operator" in out
    assert "flwr supernode register node.pub" in out
    assert "fingerprint SHA256:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["certs"], "the following arguments are required: {ca,server,node,publisher,sign}"),
        (["certs", "sign", "app.fab", "--out", "o"], "required: --publisher"),
        (["certs", "ca"], "the following arguments are required: --out"),
        (["certs", "ca", "--out", "x", "--days", "0"], "expected a positive integer, got '0'"),
        (["certs", "server", "--ca", "c", "--out", "o"], "required: --host"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        certs_parser().parse_args(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("privet: error: ") and message in lines[0]


def test_privet_certs_errors_are_one_line_with_status_2(tmp_path, capsys, monkeypatch):
    """Needs `certs` registered in privet/cli.py (parser, dispatch, CertError in user errors)."""
    ca = str(tmp_path / "ca")
    assert cli.main(["certs", "ca", "--out", ca]) == 0
    capsys.readouterr()
    assert "ca.key already exists" in one_line_error(capsys, ["certs", "ca", "--out", ca])
    server = ["certs", "server", "--ca", ca, "--out", str(tmp_path / "tls")]
    assert "neither an IP address nor a valid DNS name" in one_line_error(
        capsys, [*server, "--host", "localhost:9092"]
    )
    assert "cannot read the CA" in one_line_error(
        capsys, ["certs", "server", "--ca", str(tmp_path), "--out", ca, "--host", "localhost"]
    )
    monkeypatch.setattr(
        tempfile, "mkstemp", lambda **_: (_ for _ in ()).throw(PermissionError(13, "denied"))
    )
    assert "cannot write to folder" in one_line_error(
        capsys, ["certs", "node", "--out", str(tmp_path / "node")]
    )
    assert not (tmp_path / "tls").exists() and not (tmp_path / "node").exists()


def test_privet_certs_makes_a_deployment(tmp_path, capsys):
    """Needs `certs` registered in privet/cli.py."""
    ca, tls = str(tmp_path / "ca"), str(tmp_path / "tls")
    assert cli.main(["certs", "ca", "--out", ca]) == 0
    assert cli.main(["certs", "server", "--ca", ca, "--out", tls, "--host", "127.0.0.1"]) == 0
    assert cli.main(["certs", "node", "--out", str(tmp_path / "node")]) == 0
    assert "Send " in capsys.readouterr().out
    load_cert(tmp_path / "tls/server.crt").verify_directly_issued_by(
        load_cert(tmp_path / "ca/ca.crt")
    )


# -- a real SuperLink and SuperNodes ------------------------------------------------------------


@pytest.mark.long
def test_flower_superlink_accepts_the_files_and_authenticates_nodes(tmp_path):
    # The operator: a CA, the SuperLink's certificate; each node: its own key pair.
    make_ca(tmp_path / "ca")
    tls = make_server_cert(tmp_path / "ca", tmp_path / "tls", ["127.0.0.1", "localhost"])
    nodes = [make_node_keys(tmp_path / f"node{i}") for i in range(3)]  # node2 stays unregistered
    other_ca = make_ca(tmp_path / "other-ca")

    port = free_port()
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "privet"\n\n[superlink.privet]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{tls.ca_cert}"\n'
    )
    env = dict(
        os.environ,
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        with open(logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append(process)
        return process

    def log(name: str) -> str:
        return (logs / f"{name}.log").read_text(errors="replace")

    def supernode(name: str, key: Path, root: Path, address: str, config: str) -> subprocess.Popen:
        return start(
            name,
            [
                str(BIN / "flower-supernode"),
                "--superlink",
                address,
                "--root-certificates",
                str(root),
                "--auth-supernode-private-key",
                str(key),
                "--node-config",
                config,
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--max-retries",
                "1",
            ],
        )

    def flwr(*argv: str) -> dict:
        done = subprocess.run(
            [str(BIN / "flwr"), *argv, "--format", "json"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout[done.stdout.index("{") :])

    try:
        superlink = start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(tls.ca_cert),
                "--ssl-certfile",
                str(tls.cert),
                "--ssl-keyfile",
                str(tls.key),
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                ":flwr-in-memory:",
            ],
        )
        trust = ssl.create_default_context(cafile=tls.ca_cert)
        deadline = time.monotonic() + 30
        while True:  # the health check itself is an HTTPS request verified against our CA
            try:
                if httpx.get(f"https://127.0.0.1:{port}/health", verify=trust).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert superlink.poll() is None, log("superlink")
            assert time.monotonic() < deadline, "flower-superlink did not start: " + log(
                "superlink"
            )
            time.sleep(0.3)

        # The operator registers the two public keys it received (over the TLS Control API).
        registered = [
            str(flwr("supernode", "register", str(n.public_key))["node-id"]) for n in nodes[:2]
        ]

        # Registered nodes connect, by IP address and by DNS name, each with its own local port.
        supernode(
            "node0",
            nodes[0].private_key,
            tls.ca_cert,
            f"127.0.0.1:{port}",
            "partition-id=0 num-partitions=3",
        )
        supernode(
            "node1",
            nodes[1].private_key,
            tls.ca_cert,
            f"localhost:{port}",
            "partition-id=1 num-partitions=3",
        )
        # An unregistered key, and a node that trusts another CA, are turned away.
        stranger = supernode(
            "stranger",
            nodes[2].private_key,
            tls.ca_cert,
            f"127.0.0.1:{port}",
            "partition-id=2 num-partitions=3",
        )
        wrong_ca = supernode(
            "wrong-ca",
            nodes[0].private_key,
            other_ca.cert,
            f"127.0.0.1:{port}",
            "partition-id=0 num-partitions=3",
        )

        deadline = time.monotonic() + 30
        while True:
            status = {n["node-id"]: n["status"] for n in flwr("supernode", "list")["nodes"]}
            if all(status.get(node_id) == "online" for node_id in registered):
                break
            assert time.monotonic() < deadline, f"nodes not online: {status}\n" + log("node0")
            time.sleep(0.5)
        assert len(status) == 2  # the stranger never became a node

        assert stranger.wait(timeout=30) != 0
        assert "Failed to activate SuperNode" in log("stranger"), log("stranger")
        assert "No SuperNode found with the given public key" in log("superlink")
        assert wrong_ca.wait(timeout=30) != 0
        assert "CERTIFICATE_VERIFY_FAILED" in log("wrong-ca"), log("wrong-ca")
        assert superlink.poll() is None
    finally:
        for process in reversed(processes):
            stop(process)


def test_a_validity_beyond_100_years_is_one_line_and_writes_nothing(tmp_path, capsys):
    """Issue 12 item 10: `certs ca --days 99999999` overflowed the date with a traceback."""
    ca = tmp_path / "ca"
    line = one_line_error(capsys, ["certs", "ca", "--out", str(ca), "--days", "99999999"])
    assert "--days must be at most 36500 (100 years), got 99999999" in line
    assert not ca.exists()
    assert cli.main(["certs", "ca", "--out", str(ca)]) == 0
    capsys.readouterr()
    tls = tmp_path / "tls"
    server = ["certs", "server", "--ca", str(ca), "--out", str(tls), "--host", "localhost"]
    line = one_line_error(capsys, [*server, "--days", "99999999"])
    assert "--days must be at most 36500" in line and not tls.exists()
