"""`privet certs`: the files a TLS + node-authenticated Flower deployment needs, made locally.

A deployment needs three kinds of files, and this module makes each with the `cryptography`
package only (no openssl command):

- `privet certs ca`: a private certificate authority (`ca.crt`, `ca.key`). `ca.crt` is public: every
  SuperNode verifies the SuperLink against it (`flower-supernode --root-certificates`), and so does
  the `flwr` CLI (`root-certificates` in its config.toml). `ca.key` signs server certificates and
  should stay offline.
- `privet certs server`: the SuperLink's TLS key and certificate, signed by that CA, naming every
  host name and IP address nodes use to reach it (`flower-superlink --ssl-ca-certfile ca.crt
  --ssl-certfile server.crt --ssl-keyfile server.key`).
- `privet certs node`: a SuperNode's authentication key pair in the formats Flower 1.42 reads: an
  unencrypted OpenSSH EC private key for `flower-supernode --auth-supernode-private-key`, and an
  OpenSSH public key line (`ecdsa-sha2-nistp384 ...`) for `flwr supernode register`. Run it on the
  node: the private key never leaves that machine; only the public key goes to the SuperLink
  operator.
- `privet certs publisher`: the coordinator's app-signing key (Ed25519, OpenSSH format) and the
  `trusted-entities.yaml` every SuperNode loads with `flower-supernode --trusted-entities`, so a
  node runs only apps that key signed.
- `privet certs sign`: signs a FAB built by `flwr build` the way Flower 1.42's SuperNode verifies
  it (Ed25519 over the 8-byte big-endian signing time followed by the FAB's SHA-256), and writes
  the FAB and its signature record (`FAB.sig.json`) into a folder that `python -m privet.gateway
  --apps` serves to the SuperLink.

Every file is written atomically (a temporary file in the same folder, then `os.replace`), private
keys are created with mode 0600 from the start, and existing files are kept unless `--overwrite`.
Bad input raises `CertError` (a ValueError) with one line naming the problem; the `privet` command
prints it as `privet: error: ...` and exits with status 2.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import io
import ipaddress
import json
import os
import re
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privet.arguments import positive_int

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_CA_DAYS",
    "DEFAULT_CA_NAME",
    "DEFAULT_NODE_NAME",
    "DEFAULT_SERVER_DAYS",
    "MAX_DAYS",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "CaFiles",
    "CertError",
    "NodeKeyFiles",
    "PublisherFiles",
    "ServerFiles",
    "SignedApp",
    "add_certs_parser",
    "fab_metadata",
    "load_signed_app",
    "make_ca",
    "make_node_keys",
    "make_publisher_key",
    "make_server_cert",
    "parse_host",
    "public_key_fingerprint",
    "run_certs",
    "sign_app",
    "signed_message",
]

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.crt"
SERVER_KEY_FILE = "server.key"
DEFAULT_CA_NAME = "Privet federation CA"
DEFAULT_NODE_NAME = "node"
DEFAULT_CA_DAYS = 3650
DEFAULT_SERVER_DAYS = 825
MAX_DAYS = 36_500  # 100 years: longer is a typo (99999999 days overflowed the date, a traceback)
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
FOLDER_MODE = 0o700
CLOCK_SKEW = datetime.timedelta(minutes=5)  # backdate not-before so slightly slow clocks accept it
CURVE = ec.SECP384R1  # NIST P-384: what Flower's `flwr supernode register` suggests, fine for TLS
SIGNATURE_HASH = hashes.SHA384  # the hash that matches P-384's strength
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CertError(ValueError):
    """A `privet certs` problem (bad input, unreadable or unwritable files), in one line."""


@dataclass(frozen=True)
class CaFiles:
    """Where `make_ca` wrote the certificate authority."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerFiles:
    """Where `make_server_cert` wrote the SuperLink's TLS files, and the names it certifies."""

    cert: Path
    key: Path
    ca_cert: Path
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class NodeKeyFiles:
    """Where `make_node_keys` wrote a SuperNode's key pair, and the public key's fingerprint."""

    private_key: Path
    public_key: Path
    fingerprint: str


# -- validation ---------------------------------------------------------------------------------


def _check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise CertError(f"--days must be a positive number of days, got {days!r}")
    if days > MAX_DAYS:
        raise CertError(
            f"--days must be at most {MAX_DAYS} (100 years), got {days}; certificates are "
            "meant to be renewed"
        )
    return days


def parse_host(text: str) -> x509.GeneralName:
    """The SubjectAlternativeName entry for one host: an IPAddress for an IP, else a DNSName.

    A name must be an ASCII host name (letters, digits and hyphens in dot-separated labels of at
    most 63 characters; internationalized names in their xn-- form); a port or URL is refused,
    because TLS clients compare the bare host they connect to with these entries.
    """
    host = text.strip()
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if (
        name
        and len(name) <= 253
        and all(_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return x509.DNSName(name)
    hint = " (give the host alone, without a port or scheme)" if ":" in host or "/" in host else ""
    raise CertError(f"--host {text!r} is neither an IP address nor a valid DNS name{hint}")


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise CertError(f"--name must be 1 to 64 printable characters, got {name!r}")
    return name


# -- atomic file writing ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Output:
    path: Path
    data: bytes
    private: bool


def _make_folder(folder: Path) -> list[Path]:
    """Create `folder` (mode 0700) and missing parents; return those created, deepest last."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    created = []
    try:
        for path in reversed(missing):
            path.mkdir(mode=FOLDER_MODE)
            created.append(path)
    except FileExistsError:
        _remove_folders(created)
        raise CertError(f"{folder} is not a folder") from None
    except OSError as error:
        _remove_folders(created)
        raise CertError(f"cannot create folder {folder}: {error.strerror}") from None
    if not folder.is_dir():
        raise CertError(f"{folder} is not a folder")
    return created


def _remove_folders(created: Sequence[Path]) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()


def _check_free(paths: Sequence[Path], overwrite: bool) -> None:
    for path in paths:
        if path.is_dir():
            raise CertError(f"{path} is a folder; choose another --out")
        if path.exists() and not overwrite:
            raise CertError(f"{path} already exists; pass --overwrite to replace it")


def _write_files(outputs: Sequence[_Output], overwrite: bool) -> None:
    """Write every output or none: temp files in the target folders first, then `os.replace`.

    Private keys are created with mode 0600 (`mkstemp` never widens it), so no other user can read
    one even for a moment; public files get 0644.
    """
    _check_free([out.path for out in outputs], overwrite)
    created: list[Path] = []
    for folder in dict.fromkeys(out.path.parent for out in outputs):
        created += _make_folder(folder)
    staged: list[tuple[str, _Output]] = []
    try:
        for out in outputs:
            try:
                fd, temp = tempfile.mkstemp(dir=out.path.parent, prefix=f".{out.path.name}.")
            except OSError as error:
                raise CertError(
                    f"cannot write to folder {out.path.parent}: {error.strerror}"
                ) from None
            staged.append((temp, out))
            try:
                with os.fdopen(fd, "wb") as file:
                    os.fchmod(file.fileno(), PRIVATE_MODE if out.private else PUBLIC_MODE)
                    file.write(out.data)
                    file.flush()
                    os.fsync(file.fileno())
            except OSError as error:
                raise CertError(f"cannot write {out.path}: {error.strerror}") from None
        _check_free([out.path for out in outputs], overwrite)  # nothing appeared meanwhile
        replaced: list[Path] = []
        try:
            for temp, out in staged:
                os.replace(temp, out.path)
                replaced.append(out.path)
        except OSError as error:
            if not overwrite:  # the targets did not exist: take back the ones already placed
                for path in replaced:
                    path.unlink(missing_ok=True)
            raise CertError(f"cannot write {out.path}: {error.strerror}") from None
    except BaseException:
        for temp, _ in staged:
            Path(temp).unlink(missing_ok=True)
        _remove_folders(created)
        raise
    for folder in dict.fromkeys(out.path.parent for out in outputs):
        _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    """Make the renames durable (best effort: not every file system lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- keys and certificates ----------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVE())


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - CLOCK_SKEW, now + datetime.timedelta(days=days)


def make_ca(
    out_dir: str | os.PathLike[str],
    name: str = DEFAULT_CA_NAME,
    days: int = DEFAULT_CA_DAYS,
    overwrite: bool = False,
) -> CaFiles:
    """Create a self-signed CA: `out_dir/ca.crt` (public) and `out_dir/ca.key` (mode 0600).

    The CA is what SuperNodes and the `flwr` CLI trust instead of a public CA, so a federation needs
    no certificate from outside. It is a P-384 key with basicConstraints CA:TRUE (critical,
    path length 0: it signs server certificates, not other CAs) and keyUsage keyCertSign + cRLSign.
    """
    name, days = _check_name(name), _check_days(days)
    out = Path(out_dir)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Privet"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, SIGNATURE_HASH())
    )
    files = CaFiles(cert=out / CA_CERT_FILE, key=out / CA_KEY_FILE)
    _write_files(
        [_Output(files.key, _pkcs8(key), private=True), _Output(files.cert, _pem(cert), False)],
        overwrite,
    )
    return files


SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, SigningKey, bytes]:
    """The CA certificate, its key, and the certificate's PEM bytes; checks they belong together."""
    cert_path, key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
    hint = f"make one with 'privet certs ca --out {ca_dir}'"
    try:
        cert_pem = cert_path.read_bytes()
        key_pem = key_path.read_bytes()
    except OSError as error:
        raise CertError(
            f"cannot read the CA in {ca_dir}: {error.filename}: {error.strerror} ({hint})"
        ) from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CertError(f"{cert_path} is not a PEM certificate ({hint})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertError(f"{key_path} is encrypted; privet reads only unencrypted keys") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{key_path} is not a PEM private key ({hint})") from None
    if not isinstance(key, SigningKey):
        raise CertError(f"{key_path} cannot sign certificates (an EC, RSA or EdDSA key is needed)")
    if key.public_key() != cert.public_key():
        raise CertError(f"{key_path} is not the key of {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE missing)")
    if cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise CertError(
            f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; make a new CA"
        )
    return cert, key, cert_pem


def _signature_hash(key: SigningKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def make_server_cert(
    ca_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    hosts: Sequence[str],
    days: int | None = None,
    overwrite: bool = False,
) -> ServerFiles:
    """Create the SuperLink's TLS key and certificate, signed by the CA in `ca_dir`.

    Writes `out_dir/server.key` (mode 0600), `out_dir/server.crt` and a copy of the CA certificate
    `out_dir/ca.crt`: the three files `flower-superlink --ssl-keyfile --ssl-certfile
    --ssl-ca-certfile` reads. The certificate's SubjectAlternativeName lists every host (IP
    addresses as IPAddress, names as DNSName), because TLS clients check the address they dialed
    against it; extendedKeyUsage is serverAuth. Validity: `days`, or by default 825 days or until
    the CA expires, whichever comes first (a longer explicit `days` is an error). A SuperLink bound
    to 0.0.0.0 also reaches its own Runtime API at 127.0.0.1, so list 127.0.0.1 as well then.
    """
    if days is not None:
        _check_days(days)
    if isinstance(hosts, str):
        hosts = [hosts]
    names = list(dict.fromkeys(parse_host(host) for host in hosts))
    if not names:
        raise CertError("give at least one --host (an IP address or DNS name of the SuperLink)")
    ca_path, out = Path(ca_dir), Path(out_dir)
    ca_cert, ca_key, ca_pem = _load_ca(ca_path)
    if days is None:  # the default, shortened to the CA's own lifetime
        not_before, not_after = _validity(DEFAULT_SERVER_DAYS)
        not_after = min(not_after, ca_cert.not_valid_after_utc)
    else:
        not_before, not_after = _validity(days)
    if not_after > ca_cert.not_valid_after_utc:
        left = (ca_cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
        raise CertError(
            f"the CA expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, before {days} days from "
            f"now; pass --days {max(left, 1)} or less, or make a new CA"
        )
    key = _new_key()
    first = names[0].value
    common_name = str(first)[:64]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(not_before, ca_cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, _signature_hash(ca_key))  # type: ignore[arg-type]
    )
    files = ServerFiles(
        cert=out / SERVER_CERT_FILE,
        key=out / SERVER_KEY_FILE,
        ca_cert=out / CA_CERT_FILE,
        hosts=tuple(str(name.value) for name in names),
    )
    outputs = [_Output(files.key, _pkcs8(key), True), _Output(files.cert, _pem(cert), False)]
    try:
        same_ca = files.ca_cert.read_bytes() == ca_pem
    except OSError:
        same_ca = False
    if not same_ca:  # the CA's own folder, or a copy made before: nothing to replace
        outputs.append(_Output(files.ca_cert, ca_pem, False))
    _write_files(outputs, overwrite)
    return files


def public_key_fingerprint(openssh_public_key: bytes) -> str:
    """The `SHA256:...` fingerprint of an OpenSSH public key line, as `ssh-keygen -l` prints it.

    Operators compare it over a second channel (a call, a chat) with what the node printed, so a
    public key swapped in transit is noticed before it is registered.
    """
    blob = base64.b64decode(openssh_public_key.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def make_node_keys(
    out_dir: str | os.PathLike[str],
    name: str = DEFAULT_NODE_NAME,
    overwrite: bool = False,
) -> NodeKeyFiles:
    """Create a SuperNode's authentication key pair: `out_dir/NAME.key` and `out_dir/NAME.pub`.

    Formats are the ones Flower 1.42 reads: `flower-supernode --auth-supernode-private-key` loads
    the private key with `load_ssh_private_key` and accepts only an unencrypted EC key (so this is
    an OpenSSH private key, mode 0600); `flwr supernode register` loads the public key with
    `load_ssh_public_key` and accepts only an EC key on a NIST curve (so this is an
    `ecdsa-sha2-nistp384` line). Run it on the node: only `NAME.pub` goes to the SuperLink operator.
    """
    if not _NODE_NAME.match(name):
        raise CertError(
            f"--name {name!r} must be a file name: letters, digits, '.', '_' or '-', up to 64"
        )
    out = Path(out_dir)
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    files = NodeKeyFiles(
        private_key=out / f"{name}.key",
        public_key=out / f"{name}.pub",
        fingerprint=public_key_fingerprint(public),
    )
    _write_files(
        [
            _Output(files.private_key, private, private=True),
            _Output(files.public_key, public + f" privet-{name}\n".encode(), private=False),
        ],
        overwrite,
    )
    return files


# -- app signing --------------------------------------------------------------------------------

PUBLISHER_KEY_FILE = "publisher.key"
PUBLISHER_PUBLIC_FILE = "publisher.pub"
TRUSTED_ENTITIES_FILE = "trusted-entities.yaml"
SIGNATURE_SUFFIX = ".sig.json"
MAX_FAB_BYTES = 10 * 1024 * 1024  # Flower 1.42's FAB_MAX_SIZE: a larger FAB is refused anyway
_APP_PART = re.compile(r"^[A-Za-z0-9_.-]+$")  # Flower's APP_ID_PATTERN, one side of the '/'
_APP_VERSION = re.compile(r"^\d+\.\d+\.\d+$")  # Flower's APP_VERSION_PATTERN


@dataclass(frozen=True)
class PublisherFiles:
    """Where `make_publisher_key` wrote the app-signing key, and the key's id."""

    private_key: Path
    public_key: Path
    trusted_entities: Path
    key_id: str


@dataclass(frozen=True)
class SignedApp:
    """A FAB and its signature record, as `sign_app` writes them and the registry serves them."""

    fab: Path
    record: Path
    app_id: str  # "@publisher/name", what `flwr run @publisher/name==version` asks for
    version: str
    sha256: str
    public_key_id: str
    signature: str  # base64url without padding, as Flower's verification records carry it
    signed_at: int  # seconds since the epoch

    def verification(self) -> dict[str, str | int]:
        """The verification entry Flower's SuperLink attaches to a FAB from an app registry."""
        return {
            "public_key_id": self.public_key_id,
            "signature": self.signature,
            "signed_at": self.signed_at,
        }


def _key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"privet-publisher-{hashlib.sha256(raw).hexdigest()[:16]}"


def _openssh_public(public_key: ed25519.Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def make_publisher_key(out_dir: str | os.PathLike[str], overwrite: bool = False) -> PublisherFiles:
    """Create the coordinator's app-signing key and the nodes' `trusted-entities.yaml`.

    `publisher.key` is an unencrypted OpenSSH Ed25519 private key (mode 0600; it signs every app
    the nodes will run, so it stays with the coordinator), `publisher.pub` its public key line,
    and `trusted-entities.yaml` maps the key's id to that line, the file
    `flower-supernode --trusted-entities` reads (Flower 1.42 accepts only Ed25519 keys there).
    """
    out = Path(out_dir)
    key = ed25519.Ed25519PrivateKey.generate()
    public = _openssh_public(key.public_key()) + b" privet-publisher"
    key_id = _key_id(key.public_key())
    files = PublisherFiles(
        private_key=out / PUBLISHER_KEY_FILE,
        public_key=out / PUBLISHER_PUBLIC_FILE,
        trusted_entities=out / TRUSTED_ENTITIES_FILE,
        key_id=key_id,
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    entities = (
        "# Apps signed by this Privet coordinator; flower-supernode --trusted-entities THIS_FILE\n"
        f"{key_id}: '{public.decode()}'\n"
    )
    _write_files(
        [
            _Output(files.private_key, private, private=True),
            _Output(files.public_key, public + b"\n", private=False),
            _Output(files.trusted_entities, entities.encode(), private=False),
        ],
        overwrite,
    )
    return files


def signed_message(fab: bytes, signed_at: int) -> bytes:
    """What a publisher signs for a FAB: Flower 1.42's `create_message_to_sign`.

    The signing time as 8 big-endian bytes, then the SHA-256 digest of the FAB's bytes.
    """
    return signed_at.to_bytes(8, "big") + hashlib.sha256(fab).digest()


def fab_metadata(fab: bytes, name: str) -> tuple[str, str]:
    """A FAB's app id (`@publisher/name`) and version, read from the pyproject.toml inside it."""
    hint = f"{name} is not a Flower app bundle; build one with 'flwr build --app APP_FOLDER'"
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
            pyproject = tomllib.loads(bundle.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise CertError(hint) from None
    try:
        publisher = pyproject["tool"]["flwr"]["app"]["publisher"]
        app_name = pyproject["project"]["name"]
        version = pyproject["project"]["version"]
    except (KeyError, TypeError):
        raise CertError(hint + " (project.name, project.version or publisher missing)") from None
    if not all(isinstance(v, str) and _APP_PART.match(v) for v in (publisher, app_name)) or not (
        isinstance(version, str) and _APP_VERSION.match(version)
    ):
        raise CertError(
            f"{name}: app id @{publisher}/{app_name} version {version} is not what Flower's "
            "'flwr run @publisher/name==x.y.z' accepts"
        )
    return f"@{publisher}/{app_name}", version


def _read_fab(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FAB_BYTES:
            raise CertError(
                f"{path} has {size} bytes; Flower accepts a FAB of at most {MAX_FAB_BYTES}"
            )
        return path.read_bytes()
    except OSError as error:
        raise CertError(f"cannot read {path}: {error.strerror}") from None


def _load_publisher_key(publisher_dir: Path) -> ed25519.Ed25519PrivateKey:
    path = publisher_dir / PUBLISHER_KEY_FILE
    hint = f"make one with 'privet certs publisher --out {publisher_dir}'"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CertError(f"cannot read {path}: {error.strerror} ({hint})") from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertError(f"{path} is not an unencrypted OpenSSH private key ({hint})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise CertError(f"{path} is not an Ed25519 key; Flower verifies apps only with Ed25519")
    return key


def sign_app(
    fab_path: str | os.PathLike[str],
    publisher_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    overwrite: bool = False,
) -> SignedApp:
    """Sign a FAB with the publisher key; write the FAB and `FAB.sig.json` into `out_dir`.

    The signature is exactly what Flower 1.42's SuperNode checks when it was started with
    `--trusted-entities`: Ed25519 over `signed_message(fab, signed_at)`. The record also names
    the app id and version (read from the FAB), its SHA-256, the key id and the public key, so the
    registry can check it before serving it.
    """
    source = Path(fab_path)
    fab = _read_fab(source)
    app_id, version = fab_metadata(fab, str(source))
    key = _load_publisher_key(Path(publisher_dir))
    signed_at = int(time.time())
    signature = key.sign(signed_message(fab, signed_at))
    out = Path(out_dir)
    digest = hashlib.sha256(fab).hexdigest()
    app = SignedApp(
        fab=out / source.name,
        record=out / f"{source.name}{SIGNATURE_SUFFIX}",
        app_id=app_id,
        version=version,
        sha256=digest,
        public_key_id=_key_id(key.public_key()),
        signature=base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii"),
        signed_at=signed_at,
    )
    record = {
        "app_id": app_id,
        "app_version": version,
        "fab_file": source.name,
        "sha256": digest,
        "public_key_id": app.public_key_id,
        "public_key": _openssh_public(key.public_key()).decode("ascii"),
        "signature": app.signature,
        "signed_at": signed_at,
    }
    outputs = [_Output(app.record, (json.dumps(record, indent=2) + "\n").encode(), False)]
    if source.resolve() != app.fab.resolve():
        outputs.insert(0, _Output(app.fab, fab, private=False))
    _write_files(outputs, overwrite)
    return app


def load_signed_app(record_path: str | os.PathLike[str]) -> tuple[SignedApp, bytes]:
    """Read a `FAB.sig.json` record and its FAB, and check that the signature holds.

    Raises CertError naming the file when the FAB is missing, differs from the signed one, or the
    signature does not verify with the record's public key.
    """
    path = Path(record_path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        fab_file = path.parent / Path(str(record["fab_file"])).name
        app = SignedApp(
            fab=fab_file,
            record=path,
            app_id=str(record["app_id"]),
            version=str(record["app_version"]),
            sha256=str(record["sha256"]),
            public_key_id=str(record["public_key_id"]),
            signature=str(record["signature"]),
            signed_at=int(record["signed_at"]),
        )
        public = serialization.load_ssh_public_key(str(record["public_key"]).encode("ascii"))
        signature = base64.urlsafe_b64decode(app.signature + "=" * (-len(app.signature) % 4))
    except OSError as error:
        raise CertError(f"cannot read {path}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError, UnicodeError, UnsupportedAlgorithm):
        raise CertError(
            f"{path} is not a signature record written by 'privet certs sign'"
        ) from None
    fab = _read_fab(app.fab)
    if hashlib.sha256(fab).hexdigest() != app.sha256 or fab_metadata(fab, str(app.fab)) != (
        app.app_id,
        app.version,
    ):
        raise CertError(f"{app.fab} is not the FAB {path} signed; sign it again")
    if not isinstance(public, ed25519.Ed25519PublicKey) or _key_id(public) != app.public_key_id:
        raise CertError(f"{path}: its public key does not match its key id; sign the FAB again")
    try:
        public.verify(signature, signed_message(fab, app.signed_at))
    except InvalidSignature:
        raise CertError(f"{path}: the signature does not verify; sign the FAB again") from None
    return app, fab


# -- the command line ---------------------------------------------------------------------------


def add_certs_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `certs` subcommand and its `ca`, `server`, `node` subcommands.

    The parsers inherit the parser class of `commands` (the `privet` command's one-line errors).
    """
    parser = commands.add_parser(
        "certs",
        help="make the TLS certificates and SuperNode keys of a Flower deployment",
        description=(
            "Make what a TLS + node-authenticated Flower deployment needs: a private CA, the "
            "SuperLink's TLS certificate, and each SuperNode's authentication key pair."
        ),
    )
    kinds = parser.add_subparsers(
        dest="certs_command", required=True, metavar="{ca,server,node,publisher,sign}"
    )

    ca = kinds.add_parser(
        "ca",
        help="a private certificate authority: ca.crt (public) and ca.key (keep it offline)",
        description=(
            "Create a self-signed certificate authority in --out: ca.crt, which every SuperNode "
            "and the flwr CLI trust (--root-certificates), and ca.key (mode 0600), which signs "
            "the SuperLink's certificate and should stay offline."
        ),
    )
    ca.add_argument("--out", required=True, metavar="DIR", help="folder for ca.crt and ca.key")
    ca.add_argument("--name", default=DEFAULT_CA_NAME, help=f"CA name (default: {DEFAULT_CA_NAME})")
    ca.add_argument(
        "--days",
        type=positive_int,
        default=DEFAULT_CA_DAYS,
        help=f"validity in days (default: {DEFAULT_CA_DAYS})",
    )
    ca.add_argument("--overwrite", action="store_true", help="replace files already in --out")

    server = kinds.add_parser(
        "server",
        help="the SuperLink's TLS key and certificate, signed by the CA",
        description=(
            "Create server.key (mode 0600) and server.crt, signed by the CA in --ca, for every "
            "--host nodes use to reach the SuperLink, plus a copy of ca.crt: the files of "
            "flower-superlink --ssl-keyfile --ssl-certfile --ssl-ca-certfile. A SuperLink bound to "
            "0.0.0.0 reaches its own Runtime API at 127.0.0.1: list that too."
        ),
    )
    server.add_argument("--ca", required=True, metavar="DIR", help="folder with ca.crt and ca.key")
    server.add_argument(
        "--out", required=True, metavar="DIR", help="folder for server.key, server.crt, ca.crt"
    )
    server.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="HOST",
        help="IP address or DNS name of the SuperLink (repeat for each)",
    )
    server.add_argument(
        "--days",
        type=positive_int,
        help=f"validity in days (default: {DEFAULT_SERVER_DAYS}, cut to the CA's expiry)",
    )
    server.add_argument("--overwrite", action="store_true", help="replace files already in --out")

    node = kinds.add_parser(
        "node",
        help="a SuperNode's authentication key pair (run it on the node)",
        description=(
            "Create NAME.key (OpenSSH EC private key, mode 0600, for flower-supernode "
            "--auth-supernode-private-key; it never leaves this machine) and NAME.pub (for the "
            "SuperLink operator's flwr supernode register)."
        ),
    )
    node.add_argument("--out", required=True, metavar="DIR", help="folder for the key pair")
    node.add_argument(
        "--name",
        default=DEFAULT_NODE_NAME,
        help=f"file name stem: NAME.key and NAME.pub (default: {DEFAULT_NODE_NAME})",
    )
    node.add_argument("--overwrite", action="store_true", help="replace files already in --out")

    publisher = kinds.add_parser(
        "publisher",
        help="the coordinator's app-signing key and the nodes' trusted-entities.yaml",
        description=(
            "Create publisher.key (Ed25519, mode 0600: it signs the apps the nodes will run; keep "
            "it with the coordinator), publisher.pub and trusted-entities.yaml, which every node "
            "loads with flower-supernode --trusted-entities."
        ),
    )
    publisher.add_argument("--out", required=True, metavar="DIR", help="folder for the key")
    publisher.add_argument(
        "--overwrite", action="store_true", help="replace files already in --out"
    )

    sign = kinds.add_parser(
        "sign",
        help="sign a FAB (from flwr build) so that nodes with --trusted-entities run it",
        description=(
            "Sign a Flower app bundle built by 'flwr build' with the publisher key and write the "
            "FAB and FAB.sig.json into --out, the folder 'python -m privet.gateway --apps' serves "
            "to the SuperLink."
        ),
    )
    sign.add_argument("fab", metavar="FAB", help="the .fab file written by flwr build")
    sign.add_argument("--publisher", required=True, metavar="DIR", help="folder with publisher.key")
    sign.add_argument("--out", required=True, metavar="DIR", help="folder of signed apps")
    sign.add_argument("--overwrite", action="store_true", help="replace files already in --out")


def run_certs(args: argparse.Namespace) -> int:
    """Carry out a parsed `privet certs ...` command, print what was written and what comes next."""
    if args.certs_command == "ca":
        ca = make_ca(args.out, name=args.name, days=args.days, overwrite=args.overwrite)
        print(f"Wrote {ca.cert} (public: give it to every SuperNode and flwr CLI user)")
        print(f"Wrote {ca.key} (private, mode 0600: it signs server certificates; keep it offline)")
        print(f"Next: privet certs server --ca {ca.cert.parent} --out DIR --host SUPERLINK_HOST")
        return 0
    if args.certs_command == "server":
        files = make_server_cert(
            args.ca, args.out, args.host, days=args.days, overwrite=args.overwrite
        )
        print(f"Wrote {files.key} (private, mode 0600), {files.cert} and {files.ca_cert}")
        print(f"Certified hosts: {', '.join(files.hosts)}")
        print(
            f"Start the SuperLink with: flower-superlink --ssl-ca-certfile {files.ca_cert} "
            f"--ssl-certfile {files.cert} --ssl-keyfile {files.key} --enable-supernode-auth "
            "--host 127.0.0.1 --port 9093, and expose only its Fleet API: python -m "
            f"privet.gateway --superlink 127.0.0.1:9093 --tls {files.cert.parent} --fleet HOST:9092"
        )
        print(
            "flwr CLI ($FLWR_HOME/config.toml, absolute path): [superlink.NAME] "
            f'address = "HOST:PORT", root-certificates = "{files.ca_cert.resolve()}"'
        )
        return 0
    if args.certs_command == "node":
        keys = make_node_keys(args.out, name=args.name, overwrite=args.overwrite)
        print(f"Wrote {keys.private_key} (private, mode 0600: it never leaves this machine)")
        print(f"Wrote {keys.public_key} (public key, fingerprint {keys.fingerprint})")
        print(
            f"Send {keys.public_key} to the SuperLink operator, who runs: "
            f"flwr supernode register {keys.public_key.name}"
        )
        print(
            f"Then start: flower-supernode --root-certificates ca.crt --trusted-entities "
            f"trusted-entities.yaml --auth-supernode-private-key {keys.private_key} "
            "--superlink GATEWAY_HOST:PORT"
        )
        return 0
    if args.certs_command == "publisher":
        publisher = make_publisher_key(args.out, overwrite=args.overwrite)
        print(
            f"Wrote {publisher.private_key} (private, mode 0600: it signs the apps nodes run; "
            "keep it with the coordinator)"
        )
        print(
            f"Wrote {publisher.public_key} and {publisher.trusted_entities} "
            f"(key id {publisher.key_id})"
        )
        print(
            f"Give {publisher.trusted_entities.name} to every node: flower-supernode "
            f"--trusted-entities {publisher.trusted_entities.name} ..."
        )
        return 0
    if args.certs_command == "sign":
        app = sign_app(args.fab, args.publisher, args.out, overwrite=args.overwrite)
        print(f"Signed {app.app_id}=={app.version} (sha256 {app.sha256}) as {app.public_key_id}")
        print(f"Wrote {app.fab} and {app.record}")
        print(
            f"Serve them with: python -m privet.gateway ... --apps {app.record.parent}; then: "
            f"flwr run {app.app_id}=={app.version} FEDERATION"
        )
        return 0
    raise CertError(f"unknown certs command {args.certs_command!r}")
