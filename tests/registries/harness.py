"""Start and stop real registries (Debian's docker-registry, distribution 2.8) for tests.

Each :class:`Registry` listens on 127.0.0.1 on a free port with its own storage dir, config
and log (the access log: one line per request), and is stopped by its pid. Three setups:

* ``plain``: HTTP, no auth.
* ``tls-basic``: HTTPS with a server certificate from a CA the tests make, htpasswd Basic auth.
* ``token``: HTTP with Bearer tokens from :class:`TokenRealm`, a small stdlib token server
  whose RS256 JWTs the registry verifies against the realm's certificate.

Needs `python -m tests.registries.provision` (and `cryptography`, `bcrypt` from the dev extras).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import json
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.engines.harness import DIE_WITH_PARENT, _tail
from tests.registries.provision import is_provisioned, registry_binary

LOCALHOST = "127.0.0.1"
TOKEN_SERVICE = "packcache-test-registry"
TOKEN_ISSUER = "packcache-test-realm"


class RegistryError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA the tests make; ``cert_path`` is what a client trusts (certs.d's ca.crt)."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    cert_path: Path

    @classmethod
    def create(cls, directory: Path, name: str = "packcache test CA") -> CertificateAuthority:
        key = _rsa_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _cert_builder(subject, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "ca.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, path)

    def issue_server_cert(self, directory: Path, ip: str = LOCALHOST) -> tuple[Path, Path]:
        """A server certificate for `ip` (and localhost); returns (cert path, key path)."""
        import ipaddress

        key = _rsa_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
        cert = (
            _cert_builder(subject, self.cert.subject, key)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / "server.crt", directory / "server.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        return cert_path, key_path


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _cert_builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def htpasswd_line(user: str, password: str) -> str:
    """An htpasswd entry with a bcrypt hash, the only kind distribution accepts."""
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"


# --------------------------------------------------------------------------- token realm


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRealm:
    """A Bearer-token server: Basic credentials in, an RS256 JWT for the asked scope out.

    The signing certificate has no extended key usage, so distribution's x5c chain check
    (against ``rootcertbundle`` = this same certificate) accepts it for any purpose.
    ``requests`` records (account, scope) of every token issued, for tests to assert on.
    """

    directory: Path
    users: dict[str, str]
    requests: list[tuple[str, str]] = field(default_factory=list)
    # Tokens for requests without credentials too (account ""), pull only, as Docker Hub
    # gives them for public repositories.
    anonymous_pull: bool = False

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = _rsa_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "packcache token signer")])
        self._cert = _cert_builder(name, name, self._key).sign(self._key, hashes.SHA256())
        self.cert_path = self.directory / "token-signer.crt"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{LOCALHOST}:{self._server.server_address[1]}/token"

    def start(self) -> TokenRealm:
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                realm._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        authorization = handler.headers.get("Authorization", "")
        account = self._account(authorization)
        anonymous = not authorization and self.anonymous_pull
        if anonymous:
            account = ""
            query["scope"] = [s.replace(",push", "") for s in query.get("scope", [])]
        if account is None:
            handler.send_response(401)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        scopes = query.get("scope", [])
        self.requests.append((account, " ".join(scopes)))
        token = self.token(account, scopes)
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _account(self, authorization: str) -> str | None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user if user in self.users and self.users[user] == password else None

    def token(self, account: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            for item in scope.split(" "):
                kind, _, rest = item.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind == "repository" and name:
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {
            "alg": "RS256",
            "typ": "JWT",
            "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": account,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 60,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


# --------------------------------------------------------------------------- registry


class Registry:
    """One docker-registry process; ``host`` is what image references and docker use."""

    def __init__(
        self,
        kind: str,
        root: Path,
        *,
        tls: tuple[Path, Path] | None = None,
        htpasswd: Path | None = None,
        realm: TokenRealm | None = None,
    ) -> None:
        self.kind = kind
        self.root = root
        self.tls = tls
        self.htpasswd = htpasswd
        self.realm = realm
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def config(self) -> dict[str, object]:
        http: dict[str, object] = {"addr": self.host, "secret": secrets.token_hex(16)}
        if self.tls:
            http["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if self.htpasswd:
            config["auth"] = {"htpasswd": {"realm": "packcache-test", "path": str(self.htpasswd)}}
        elif self.realm:
            config["auth"] = {
                "token": {
                    "realm": self.realm.url,
                    "service": TOKEN_SERVICE,
                    "issuer": TOKEN_ISSUER,
                    "rootcertbundle": str(self.realm.cert_path),
                }
            }
        return config

    def start(self, timeout: float = 30.0) -> Registry:
        if not is_provisioned():
            raise RegistryError(
                "docker-registry is not provisioned: run `python -m tests.registries.provision`"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # another process may take the free port before the registry binds
            self.port = free_port()
            config_path = self.root / "config.yml"
            # JSON is YAML: no YAML writer needed.
            config_path.write_text(json.dumps(self.config(), indent=2))
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [*DIE_WITH_PARENT, str(registry_binary()), "serve", str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready(timeout):
                return self
            if "address already in use" not in self.log_text():
                break
        tail = _tail(self.log_path)
        self.stop()
        raise RegistryError(f"registry {self.kind} did not start; log tail:\n{tail}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.status("/v2/") in (200, 401):
                    return True
            time.sleep(0.05)
        return False

    def status(self, path: str) -> int:
        """The HTTP status of an anonymous GET (TLS not verified: a readiness probe)."""
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                LOCALHOST, self.port, timeout=2, context=context
            )
        else:
            conn = http.client.HTTPConnection(LOCALHOST, self.port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def requests_logged(self, method: str, path_part: str) -> list[str]:
        """Access-log lines of `method` requests whose path holds `path_part`."""
        return [
            line
            for line in self.log_text().splitlines()
            if f'"{method} ' in line and path_part in line
        ]


@dataclass
class RegistrySet:
    """The three test registries of a session, with the credentials and CA they use."""

    root: Path
    user: str = "packcache"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    _running: dict[str, Registry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    ca: CertificateAuthority | None = None
    realm: TokenRealm | None = None

    def get(self, kind: str) -> Registry:
        with self._lock:
            if kind not in self._running:
                self._running[kind] = self._make(kind).start()
            return self._running[kind]

    @property
    def plain(self) -> Registry:
        return self.get("plain")

    @property
    def tls_basic(self) -> Registry:
        return self.get("tls-basic")

    @property
    def token(self) -> Registry:
        return self.get("token")

    def _make(self, kind: str) -> Registry:
        directory = self.root / kind
        directory.mkdir(parents=True, exist_ok=True)
        if kind == "plain":
            return Registry(kind, directory)
        if kind == "tls-basic":
            self.ca = self.ca or CertificateAuthority.create(self.root / "ca")
            htpasswd = directory / "htpasswd"
            htpasswd.write_text(htpasswd_line(self.user, self.password))
            return Registry(
                kind, directory, tls=self.ca.issue_server_cert(directory), htpasswd=htpasswd
            )
        if kind == "token":
            self.realm = TokenRealm(self.root / "realm", {self.user: self.password}).start()
            return Registry(kind, directory, realm=self.realm)
        raise RegistryError(f"unknown registry kind {kind!r}")

    def running(self) -> Iterator[Registry]:
        return iter(list(self._running.values()))

    def stop_all(self) -> None:
        with self._lock:
            registries, self._running = list(self._running.values()), {}
        for registry in registries:
            registry.stop()
        if self.realm:
            self.realm.stop()
            self.realm = None
