"""A client of the OCI distribution API, as docker and pack use it, over `requests`.

One RegistryClient talks to one registry host: it pings `/v2/`, answers the auth challenge
(Bearer tokens from the realm per repository scope, or Basic) with the Docker config's
credentials, verifies TLS with the system CAs plus `<certs dir>/<host>/*.crt` like docker, and
retries idempotent requests on resets, 5xx and 429. Everything a registry sends is hostile:
documents are size-bounded and read with jsondoc's strict reader, manifests are checked against
their digest, and blobs are only ever streamed (the store verifies their digest as it writes).
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.jsondoc import check_index, check_manifest, is_sha256_digest, strict_loads
from packcache.progress import NO_PROGRESS, NO_TASK, Progress, Task
from packcache.refs import normalize
from packcache.transports.registry_credentials import Credentials, find_credentials

if TYPE_CHECKING:  # imported where a client is made: commands that never talk to a
    import requests  # registry (a rebase from the daemon) do not pay for importing them

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
MAX_DOCUMENT_BYTES = 4 << 20  # distribution refuses manifests over 4 MiB too
MAX_CONFIG_BYTES = 16 << 20  # as the archive reader's cap on metadata
CHUNK = 1 << 20
DEFAULT_CERTS_DIR = Path("/etc/docker/certs.d")
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "packcache"
PUSH_ACTIONS = ("pull", "push")  # the token scope a push asks for


class AccessDeniedError(PackcacheError):
    """The registry denied access to the repository (error code DENIED, as Docker Hub
    answers for a repository that does not exist): docker reports such a pull as "not
    found" (moby's translatePullError), and pack falls back on the daemon's copy then.
    Missing or wrong credentials (UNAUTHORIZED) stay an error, as they do for docker."""


class ImageName(NamedTuple):
    """A reference split for the API: host, repository, and a tag or digest."""

    host: str
    repository: str
    reference: str

    @classmethod
    def parse(cls, text: str) -> ImageName:
        name, at, digest = normalize(text).partition("@")
        if at and not is_sha256_digest(digest):
            raise UsageError(f"invalid image reference {text!r}: not a sha256 digest")
        host, _, path = name.partition("/")
        repository, reference = path, digest
        if not at:
            repository, _, reference = path.rpartition(":")
        return cls(host, repository, reference)

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.host}/{self.repository}{sep}{self.reference}"


class Platform(NamedTuple):
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, platform: dict[str, Any]) -> bool:
        if platform.get("os") != self.os or platform.get("architecture") != self.architecture:
            return False
        variant = platform.get("variant") or ("v8" if self.architecture == "arm64" else None)
        return self.variant is None or self.variant == variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


DEFAULT_PLATFORM = Platform("linux", "amd64")


class RegistryOptions(NamedTuple):
    """How to reach registries; `insecure` hosts get plain HTTP or unverified TLS."""

    insecure: frozenset[str] = frozenset()
    certs_dir: Path = DEFAULT_CERTS_DIR
    docker_config_dir: Path | None = None
    attempts: int = 4
    backoff_seconds: float = 0.25
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class Manifest:
    """An image manifest as the registry served it, with its digest checked."""

    digest: str
    media_type: str
    body: bytes
    document: dict[str, Any] = field(repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return self.document["config"]  # type: ignore[no-any-return]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.document.get("layers") or [])


class _Challenge(NamedTuple):
    scheme: str  # "basic" or "bearer"
    params: dict[str, str]


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> _Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    return _Challenge(scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest)))


def _context_adapter(context: ssl.SSLContext) -> Any:
    """An HTTPAdapter whose connections use our SSLContext (system CAs + certs.d)."""
    from requests.adapters import HTTPAdapter

    class _ContextAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["ssl_context"] = context
            super().init_poolmanager(*args, **kwargs)

    return _ContextAdapter(pool_connections=1, pool_maxsize=16, max_retries=0)


def ssl_context(host: str, certs_dir: Path, insecure: bool) -> ssl.SSLContext:
    """docker's TLS for `host`: system CAs, certs.d's *.crt CAs and *.cert/*.key client pairs.
    An insecure host's certificate is not verified, so no CA is loaded for it (loading the
    system's is the costly part of a context); its client pairs still are."""
    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context()
    host_dir = certs_dir / host
    try:
        for ca in [] if insecure else sorted(host_dir.glob("*.crt")):
            context.load_verify_locations(cafile=str(ca))
        for cert in sorted(host_dir.glob("*.cert")):
            context.load_cert_chain(str(cert), str(cert.with_suffix(".key")))
    except (OSError, ssl.SSLError) as exc:
        raise PackcacheError(f"cannot use the certificates in {host_dir}: {exc}") from exc
    return context


def _error_detail(response: requests.Response) -> str:
    """The registry's own error message, read from at most 64 KiB of its body."""
    try:
        body = response.raw.read(64 << 10, decode_content=True) if response.raw else b""
        errors = strict_loads(body, "the registry's error").get("errors") or []
        return "; ".join(
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
            for e in errors
            if isinstance(e, dict)
        )
    except Exception:
        return ""
    finally:
        response.close()


def read_bounded(response: requests.Response, limit: int, what: str) -> bytes:
    """A document's body, refusing one larger than `limit` without reading it all."""
    import urllib3

    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        response.close()
        raise PackcacheError(f"{what} is {int(declared)} bytes, more than the {limit} allowed")
    parts, total = [], 0
    try:
        for chunk in response.raw.stream(64 << 10, decode_content=True):
            total += len(chunk)
            if total > limit:
                raise PackcacheError(f"{what} is more than the {limit} bytes allowed")
            parts.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise PackcacheError(f"{what} could not be read: {exc}") from exc
    finally:
        response.close()
    return b"".join(parts)


def network_reason(exc: BaseException) -> str:
    """The root cause of a connection failure in a few words ("Connection refused")."""
    seen: set[int] = set()
    deepest: BaseException = exc
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            deepest = current
        nested = [a for a in current.args if isinstance(a, BaseException)]
        current = current.__cause__ or current.__context__ or (nested[0] if nested else None)
    if isinstance(deepest, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {deepest.verify_message}"
    if isinstance(deepest, ssl.SSLError):
        return str(deepest.reason or deepest).replace("_", " ").lower()
    if isinstance(deepest, OSError) and deepest.strerror:
        return deepest.strerror
    return str(deepest)


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _session(host: str, options: RegistryOptions) -> requests.Session:
    """A session whose HTTPS to `host` is verified as docker verifies it (see ssl_context)."""
    import requests
    from requests.adapters import HTTPAdapter

    insecure = host in options.insecure
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.verify = not insecure
    # Not the environment's CA bundle (REQUESTS_CA_BUNDLE would override verify) nor
    # ~/.netrc credentials: TLS and auth are docker's, from certs.d and the Docker config.
    session.trust_env = False
    session.mount("https://", _context_adapter(ssl_context(host, options.certs_dir, insecure)))
    session.mount("http://", HTTPAdapter(pool_maxsize=16, max_retries=0))
    return session


class RegistryClient:
    """Requests to one registry host, authenticated per repository scope."""

    def __init__(
        self,
        host: str,
        options: RegistryOptions | None = None,
        *,
        actions: Iterable[str] = ("pull",),
        credentials: Credentials | None = None,
        progress: Progress = NO_PROGRESS,
    ) -> None:
        self.host = host
        self.progress = progress  # shows each blob's bytes as they arrive
        self.options = options or RegistryOptions()
        self.actions = ",".join(actions)
        self.insecure = host in self.options.insecure
        if self.insecure:  # asked for by name: urllib3's warning on every request is noise
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._credentials = credentials
        self._credentials_read = credentials is not None
        self._session = _session(host, self.options)
        self._realm_sessions: dict[str, requests.Session] = {}
        self._base: str | None = None
        # Threads reading several images at once ping once, not each on its own.
        self._ping_lock = threading.Lock()
        self._challenge: _Challenge | None = None
        self._tokens: dict[str, str] = {}

    def close(self) -> None:
        for session in (self._session, *self._realm_sessions.values()):
            session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connection and auth ---------------------------------------------------------------

    def credentials(self) -> Credentials | None:
        if not self._credentials_read:
            self._credentials = find_credentials(self.host, self.options.docker_config_dir)
            self._credentials_read = True
        return self._credentials

    def ping(self) -> None:
        """Find the scheme that answers `/v2/` and the auth it asks for."""
        if self._base is not None:
            return
        with self._ping_lock:
            if self._base is None:
                self._ping()

    def _ping(self) -> None:
        import requests

        schemes = ("https", "http") if self.insecure else ("https",)
        last: Exception | None = None
        for scheme in schemes:
            base = f"{scheme}://{self.host}"
            try:
                response = self._with_retries(lambda b=base: self._raw("GET", f"{b}/v2/"), "ping")
            except requests.exceptions.SSLError as exc:
                last = exc
                continue
            except PackcacheError as exc:
                last = exc
                continue
            if response.status_code not in (200, 401):
                detail = _error_detail(response)
                raise PackcacheError(
                    f"registry {self.host} answered HTTP {response.status_code} to GET /v2/"
                    f"{': ' + detail if detail else ''}"
                )
            self._challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            response.close()
            self._base = base
            return
        raise self._unreachable(last)

    def _unreachable(self, exc: Exception | None) -> PackcacheError:
        import requests

        if isinstance(exc, requests.exceptions.SSLError):
            return PackcacheError(
                f"TLS to registry {self.host} failed ({network_reason(exc)}): trust its CA "
                f"with {self.options.certs_dir / self.host}/ca.crt, or name it insecure"
            )
        if isinstance(exc, PackcacheError):
            return exc
        return PackcacheError(
            f"registry {self.host} is not reachable: {network_reason(exc) if exc else '?'}"
        )

    def _scope(self, repository: str, mount_from: str | None = None) -> str:
        """The token scope for a request; a cross-repository mount also reads `mount_from`."""
        scope = f"repository:{repository}:{self.actions}"
        if mount_from is not None and mount_from != repository:
            scope += f" repository:{mount_from}:pull"
        return scope

    def _authorization(self, scope: str) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        credentials = self.credentials()
        if challenge.scheme == "basic":
            if credentials is None:
                raise PackcacheError(
                    f"registry {self.host} asks for a user and password and the Docker config "
                    f"has none for it (docker login {self.host})"
                )
            pair = f"{credentials.username}:{credentials.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        if scope not in self._tokens:
            self._tokens[scope] = self._fetch_token(challenge, scope, credentials)
        return f"Bearer {self._tokens[scope]}"

    def _fetch_token(
        self, challenge: _Challenge, scope: str, credentials: Credentials | None
    ) -> str:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise PackcacheError(f"registry {self.host} names no usable token realm ({realm!r})")
        params: dict[str, str | list[str]] = {"scope": scope.split(" ")}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        auth = (credentials.username, credentials.password) if credentials else None
        session = self._realm_session(realm)
        response = self._with_retries(
            lambda: session.request(
                "GET", realm, params=params, auth=auth, stream=True,
                timeout=self.options.timeout_seconds,
            ),
            "token",
        )  # fmt: skip
        if response.status_code in (401, 403):
            detail = _error_detail(response)
            raise PackcacheError(
                f"the token service of {self.host} refused the credentials"
                f"{' of ' + credentials.username if credentials else ' (none given)'}"
                f": HTTP {response.status_code} {detail}".rstrip()
            )
        if response.status_code != 200:
            detail = _error_detail(response)
            raise PackcacheError(
                f"the token service of {self.host} answered HTTP {response.status_code} {detail}"
            )
        answer = strict_loads(read_bounded(response, 1 << 20, "a token"), "the token answer")
        token = (
            (answer.get("token") or answer.get("access_token"))
            if isinstance(answer, dict)
            else None
        )
        if not isinstance(token, str) or not token:
            raise PackcacheError(f"the token service of {self.host} answered without a token")
        return token

    def _realm_session(self, realm: str) -> requests.Session:
        """The registry's own session for a realm on its host; for another host, one with
        that host's TLS (an insecure registry does not make its token service insecure)."""
        realm_host = urlsplit(realm).netloc
        if realm_host == self.host:
            return self._session
        if realm_host not in self._realm_sessions:
            self._realm_sessions[realm_host] = _session(realm_host, self.options)
        return self._realm_sessions[realm_host]

    # -- requests --------------------------------------------------------------------------

    def _raw(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return self._session.request(
            method, url, stream=True, timeout=self.options.timeout_seconds, **kwargs
        )

    def _with_retries(self, send: Any, what: str) -> requests.Response:
        """send() again after resets, 5xx and 429, backing off; the last answer otherwise."""
        import requests

        last: Exception | None = None
        for attempt in range(self.options.attempts):
            if attempt:
                time.sleep(self.options.backoff_seconds * 2 ** (attempt - 1))
            try:
                response = send()
            except requests.exceptions.SSLError:
                raise
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last = exc
                continue
            if response.status_code in RETRY_STATUSES and attempt + 1 < self.options.attempts:
                response.close()
                continue
            return response
        raise PackcacheError(
            f"registry {self.host} is not reachable ({network_reason(last) if last else what}, "
            f"{self.options.attempts} attempts)"
        )

    def request(
        self,
        method: str,
        repository: str,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        url: str | None = None,
        body: Callable[[], Any] | None = None,
        mount_from: str | None = None,
    ) -> requests.Response:
        """An authenticated request to /v2/<repository>/<path> (or to `url`, an upload
        location the registry gave), body unread. Retried as _with_retries does, except one
        that sends `body()`: an upload session a broken request wrote into cannot be trusted,
        so its caller starts the upload again instead (connection errors reach it as they are)."""
        self.ping()
        target = url or f"{self._base}/v2/{repository}/{path}"
        scope = self._scope(repository, mount_from)
        for renewed in (False, True):
            sent = dict(headers or {})
            authorization = self._authorization(scope)
            if authorization:
                sent["Authorization"] = authorization
            if body is None:
                response = self._with_retries(
                    lambda h=sent: self._raw(method, target, headers=h), f"{method} {path}"
                )
            else:
                response = self._raw(method, target, headers=sent, data=body())
            if response.status_code != 401 or renewed or self._challenge is None:
                return response
            # A token may have expired: fetch a new one once before calling it refused.
            self._tokens.pop(scope, None)
            if self._challenge.scheme == "basic":
                return response
            response.close()
        return response

    def _fail(self, response: requests.Response, what: str) -> PackcacheError:
        status = response.status_code
        detail = _error_detail(response)
        said = f": {detail}" if detail else ""
        if status in (401, 403):
            denied = detail.startswith("DENIED") or "; DENIED" in detail
            return (AccessDeniedError if denied else PackcacheError)(
                f"registry {self.host} refused access to {what} (HTTP {status}{said}): "
                f"check the credentials (docker login {self.host})"
            )
        if status == 404:
            return NotFoundError(f"{what} not found on {self.host}{said}")
        return PackcacheError(f"registry {self.host} answered HTTP {status} for {what}{said}")

    # -- manifests -------------------------------------------------------------------------

    def _manifest_document(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of one manifest or index, its digest checked."""
        sep = "@" if reference.startswith("sha256:") else ":"
        what = f"manifest {repository}{sep}{reference}"
        response = self.request("GET", repository, f"manifests/{reference}", {"Accept": ACCEPT})
        if response.status_code != 200:
            raise self._fail(response, what)
        header_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        served_digest = response.headers.get("Docker-Content-Digest")
        body = read_bounded(response, MAX_DOCUMENT_BYTES, what)
        digest = _digest_of(body)
        for expected in (reference if reference.startswith("sha256:") else None, served_digest):
            if expected and expected != digest:
                raise PackcacheError(
                    f"registry {self.host} served {what} with digest {digest}, not {expected}"
                )
        return body, header_type, digest

    def has_manifest(self, repository: str, reference: str) -> bool:
        """Does the registry answer for this tag or digest (a HEAD, no body read)?"""
        response = self.request("HEAD", repository, f"manifests/{reference}", {"Accept": ACCEPT})
        response.close()
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise self._fail(response, f"manifest {repository}:{reference}")
        return True

    def manifest(
        self, repository: str, reference: str, platform: Platform = DEFAULT_PLATFORM
    ) -> Manifest:
        """The image manifest for a tag or digest; from an index, the one for `platform`."""
        body, header_type, digest = self._manifest_document(repository, reference)
        what = f"the manifest of {self.host}/{repository}@{digest}"
        document = strict_loads(body, what)
        media_type = (
            document.get("mediaType") if isinstance(document, dict) else None
        ) or header_type
        if media_type in INDEX_TYPES:
            chosen = self._choose(check_index(document, what), platform, what)
            body, header_type, digest = self._manifest_document(repository, chosen)
            what = f"the manifest of {self.host}/{repository}@{digest}"
            document = strict_loads(body, what)
            media_type = (
                document.get("mediaType") if isinstance(document, dict) else None
            ) or header_type
        if media_type not in MANIFEST_TYPES:
            raise PackcacheError(f"{what} is of type {media_type!r}, not an image manifest")
        manifest = check_manifest(document, what)
        if manifest.get("schemaVersion") != 2:
            raise PackcacheError(
                f"{what} has schemaVersion {manifest.get('schemaVersion')!r}, not 2"
            )
        return Manifest(digest, media_type, body, manifest)

    @staticmethod
    def _choose(descriptors: list[dict[str, Any]], platform: Platform, what: str) -> str:
        found = [d for d in descriptors if Platform.matches(platform, d.get("platform") or {})]
        if not found:
            offered = sorted(
                {
                    "/".join(
                        str(v) for v in (p.get("os"), p.get("architecture"), p.get("variant")) if v
                    )
                    for d in descriptors
                    if (p := d.get("platform") or {})
                }
            )
            raise NotFoundError(
                f"{what} is a list without an image for {platform} (it has: "
                f"{', '.join(offered) or 'none'})"
            )
        return str(found[0]["digest"])

    # -- blobs -----------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size the registry holds `digest` with, or None when it does not have it."""
        response = self.request("HEAD", repository, f"blobs/{digest}")
        response.close()
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"blob {repository}@{digest}")
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None

    def read_document_blob(self, repository: str, descriptor: dict[str, Any]) -> bytes:
        """A small blob (an image config) read whole, bounded and checked against its digest."""
        digest = descriptor["digest"]
        what = f"blob {self.host}/{repository}@{digest}"
        response = self._open_blob_response(repository, digest, 0)
        body = read_bounded(response, MAX_CONFIG_BYTES, what)
        if _digest_of(body) != digest or (
            descriptor.get("size") is not None and len(body) != descriptor["size"]
        ):
            raise PackcacheError(f"registry {self.host} served {what} with other bytes")
        return body

    def open_blob(self, repository: str, digest: str, size: int | None = None) -> BlobReader:
        """A blob's bytes as a file object, read front to back once (see BlobReader), shown
        as docker pull shows a layer: its short digest, bytes and speed."""
        task = self.progress.task(digest.removeprefix("sha256:")[:12], size)
        return BlobReader(self, repository, digest, size, task)

    def _open_blob_response(self, repository: str, digest: str, offset: int) -> requests.Response:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.request("GET", repository, f"blobs/{digest}", headers)
        if response.status_code == 206 and offset:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                response.close()
                raise PackcacheError(
                    f"registry {self.host} resumed blob {digest} at the wrong byte"
                )
            return response
        if response.status_code != 200:
            raise self._fail(response, f"blob {repository}@{digest}")
        _skip(response, offset)
        return response


def _skip(response: requests.Response, count: int) -> None:
    """Discard the first `count` bytes (a registry that ignored Range sends all of them)."""
    import urllib3

    while count:
        data = response.raw.read(min(count, CHUNK), decode_content=False)
        if not data:
            raise urllib3.exceptions.ProtocolError("blob ended before the resume point")
        count -= len(data)


class BlobReader:
    """A blob streamed in chunks as a read-only file object, never held whole.

    A connection dropped mid-blob is reopened with a Range request from the byte reached,
    up to the client's attempts; the bytes are not checked here: whoever consumes them
    (Store.stage) verifies the digest over the whole stream.
    """

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        digest: str,
        size: int | None,
        task: Task = NO_TASK,
    ):
        self._client = client
        self._task = task
        self._repository = repository
        self._digest = digest
        self._size = size
        self._offset = 0
        self._drops = 0
        self._response: requests.Response | None = None

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def drops(self) -> int:
        """How many times the connection dropped and the download resumed."""
        return self._drops

    def read(self, n: int = CHUNK) -> bytes:
        import requests
        import urllib3

        n = CHUNK if n is None or n < 0 else n
        while True:
            if self._response is None:
                self._response = self._client._open_blob_response(
                    self._repository, self._digest, self._offset
                )
            try:
                data = self._response.raw.read(n, decode_content=False)
                if not data and self._size is not None and self._offset < self._size:
                    raise urllib3.exceptions.ProtocolError("connection closed before the end")
            except (
                urllib3.exceptions.HTTPError,
                requests.exceptions.RequestException,
                OSError,
            ) as exc:
                self._dropped(exc)
                continue
            self._offset += len(data)
            self._task.advance(len(data))
            if self._size is not None and self._offset > self._size:
                raise PackcacheError(
                    f"registry {self._client.host} sent more than {self._size} bytes for blob "
                    f"{self._digest}"
                )
            return data

    def _dropped(self, exc: Exception) -> None:
        self.close()
        self._drops += 1
        options = self._client.options
        if self._drops >= options.attempts:
            raise PackcacheError(
                f"blob {self._digest} from {self._client.host} kept breaking off "
                f"({self._drops} times, last at byte {self._offset}): {exc}"
            ) from exc
        time.sleep(options.backoff_seconds * 2 ** (self._drops - 1))

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        self._task.done()  # close() alone also ends a dropped connection, not the download


class RegistryClients:
    """One client per registry host for a whole command, closed together. With `push_host`,
    that host's client may push and shows `progress` (its uploads: a blob copied through
    from another registry is shown once); without, every client shows its downloads."""

    def __init__(
        self,
        options: RegistryOptions,
        *,
        push_host: str | None = None,
        progress: Progress = NO_PROGRESS,
    ) -> None:
        self.options = options
        self.push_host = push_host
        self.progress = progress
        self._clients: dict[str, RegistryClient] = {}

    def for_host(self, host: str) -> RegistryClient:
        if host not in self._clients:
            pushing = host == self.push_host
            shown = pushing or self.push_host is None
            self._clients[host] = RegistryClient(
                host,
                self.options,
                actions=PUSH_ACTIONS if pushing else ("pull",),
                progress=self.progress if shown else NO_PROGRESS,
            )
        return self._clients[host]

    def for_name(self, name: ImageName) -> RegistryClient:
        return self.for_host(name.api_host)

    def readable(self, ref: str) -> bool:
        """pack's read-access check (CheckReadAccess): any failure (an invalid name, a
        registry unreachable, refusing or lacking it) is a no."""
        try:
            name = ImageName.parse(ref)
            return self.for_name(name).has_manifest(name.repository, name.reference)
        except PackcacheError:
            return False

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> RegistryClients:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
