"""The Docker daemon, through its Engine API (transports/engine_api.py): what it is, what it
holds, save and load streams. The docker SDK is imported only for a pull, which needs its
registry credentials handling.

Errors become one clear PackcacheError naming the socket, so a user knows what to fix.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import stat as stat_mode
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from packcache.errors import NotFoundError, PackcacheError, not_in_daemon
from packcache.image.inspected import InspectedImage
from packcache.progress import NO_PROGRESS, CountingReader, Progress, counted
from packcache.transports.engine_api import (
    API_VERSION_HEADER,
    AnswerTooLarge,
    EngineApi,
    EngineApiError,
    Params,
    Response,
    json_stream,
)

MIN_API_VERSION = "1.41"  # Engine 20.10, the oldest engine in the test matrix
DEFAULT_HOST = "unix:///var/run/docker.sock"
# Inspects overlap: an operation asks about a dozen images at once, each a short daemon round trip.
INSPECT_THREADS = 8
MAX_CONFIG = 16 << 20  # an image config larger than this is not one
# A 404 whose message says one of these is about an image (as the docker SDK tells them apart).
IMAGE_NOT_FOUND = (
    "no such image",
    "not found: does not exist or no pull access",
    "repository does not exist",
    "was found but does not match the specified platform",
)
T = TypeVar("T")


class DaemonError(PackcacheError):
    """The daemon could not be reached or refused a request."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class EngineInfo:
    id: str  # the daemon's own ID: which engine an image was seen in
    version: str  # Engine version, e.g. 26.1.5
    api_version: str  # negotiated API version
    containerd_store: bool  # image store is containerd's (not a graphdriver)
    os: str
    architecture: str
    host: str
    root_dir: str = ""  # DockerRootDir: where a local daemon keeps images and volumes
    driver: str = ""  # the storage driver, e.g. overlay2
    # What API 1.46+ reports of the daemon's containerd (Address, Namespaces); else empty.
    containerd: Mapping[str, Any] = field(default_factory=dict)


def check_api_version(api_version: str, host: str) -> None:
    if _version_tuple(api_version) < _version_tuple(MIN_API_VERSION):
        raise DaemonError(
            f"the Docker engine at {host} speaks API {api_version}; packcache needs "
            f"{MIN_API_VERSION} (Engine 20.10) or newer"
        )


def explain(host: str, exc: BaseException) -> DaemonError:
    text = str(exc)
    if "Permission denied" in text or isinstance(exc, PermissionError):
        return DaemonError(
            f"permission denied on the Docker socket {host}: run as root or join the docker group"
        )
    if isinstance(exc, TimeoutError) or "timed out" in text:
        return DaemonError(f"the Docker daemon at {host} does not answer (timed out)")
    if isinstance(exc, FileNotFoundError | ConnectionError | http.client.HTTPException) or any(
        s in text for s in ("No such file", "Connection refused", "Connection aborted")
    ):
        return DaemonError(
            f"cannot reach the Docker daemon at {host}: is it running? "
            "(set DOCKER_HOST or --host to use another)"
        )
    return DaemonError(f"Docker daemon at {host}: {text}")


# A daemon that takes the connection and never answers is reported after this long, not after
# the long timeout that loads and saves of gigabytes need.
HANDSHAKE_TIMEOUT_S = 30


class Daemon:
    """A connection to one Docker engine."""

    def __init__(
        self,
        host: str | None = None,
        timeout: int = 600,
        *,
        progress: Progress = NO_PROGRESS,
        containerd_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        self.progress = progress  # shows the bytes of saves and loads as they go
        # Where to find the daemon's containerd where its info does not say (see
        # transports/containerd.py: find_endpoint); None: the environment.
        self.containerd_settings = containerd_settings
        self._timeout = timeout
        self._image_ids: list[str] | None = None
        self._listing: Future[list[dict]] | None = None  # the image list, being asked for
        # What `inspect_image` returned per ref and per image ID (None: not found), until this
        # client changes the daemon (load, pull): one operation asks about the same images
        # several times, by tag and by ID.
        self._inspected: dict[str, InspectedImage | None] = {}
        # The manifests an inspect with them gave per ref (API 1.48+), kept as `_inspected`.
        self._manifests: dict[str, list[dict]] = {}
        # How many times this client changed the daemon: an answer asked for beside the
        # operation is remembered only where nothing changed since it was asked.
        self.changes = 0
        self._listing_lock = threading.Lock()
        try:
            self.api = EngineApi(self.host, HANDSHAKE_TIMEOUT_S)
        except ValueError as exc:  # a malformed URL, e.g. tcp://[::1
            raise DaemonError(f"invalid Docker host {self.host!r}: {exc}") from exc
        # Unversioned, the info comes at the daemon's own API version, which every answer
        # names: one round trip where asking for the version first would take two.
        raw_info, headers = self._call("its info", lambda: self.api.call("GET", "/info"))
        api_version = headers.get(API_VERSION_HEADER) or self._server_api_version()
        self.api.version = api_version
        self.api.timeout = timeout
        if not isinstance(raw_info, dict):
            raise DaemonError(f"the Docker daemon at {self.host} sent an unreadable info")
        self.raw_info: dict = raw_info  # `docker info` as the daemon sent it
        check_api_version(api_version, self.host)
        driver_status = dict(tuple(pair) for pair in raw_info.get("DriverStatus") or [])
        self.info = EngineInfo(
            id=raw_info.get("ID") or "",
            version=raw_info.get("ServerVersion") or "",
            api_version=api_version,
            containerd_store=driver_status.get("driver-type") == "io.containerd.snapshotter.v1",
            os=raw_info.get("OSType") or "linux",
            architecture=raw_info.get("Architecture") or "",
            host=self.host,
            root_dir=raw_info.get("DockerRootDir") or "",
            driver=raw_info.get("Driver") or "",
            containerd=raw_info.get("Containerd") or {},
        )

    def _server_api_version(self) -> str:
        """The API version from /version, for a daemon whose answers do not name it."""
        version, _ = self._call("its version", lambda: self.api.call("GET", "/version"))
        found = version.get("ApiVersion") if isinstance(version, dict) else None
        if not isinstance(found, str):
            raise DaemonError(f"the Docker daemon at {self.host} does not say its API version")
        return found

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (
            EngineApiError,
            AnswerTooLarge,
            ValueError,
            OSError,
            http.client.HTTPException,
        ) as exc:
            raise self._failure(what, exc) from exc

    def _failure(self, what: str, exc: Exception) -> PackcacheError:
        """The error a failed call about `what` is reported as."""
        if isinstance(exc, EngineApiError):
            if exc.status == 404 and any(m in exc.message.lower() for m in IMAGE_NOT_FOUND):
                return not_in_daemon(what, self.host)
            return DaemonError(f"the Docker daemon refused {what}: {exc.message}")
        if isinstance(exc, AnswerTooLarge):
            return DaemonError(f"the Docker daemon sent too much for {what}: {exc}")
        if isinstance(exc, ValueError):  # JSON that does not parse
            return DaemonError(f"the Docker daemon sent an unreadable answer to {what}")
        return explain(self.host, exc)

    def _json(
        self, what: str, method: str, endpoint: str, *args: str, params: Params | None = None
    ) -> Any:
        """One call whose JSON answer is read whole."""
        url = self.api.url(endpoint, *args, params=params)
        return self._call(what, lambda: self.api.call(method, url)[0])

    def _open(
        self, what: str, endpoint: str, *args: str, params: Params | None = None
    ) -> Response | None:
        """A GET whose answer is streamed; None where the daemon answers 404."""
        url = self.api.url(endpoint, *args, params=params)
        response = self._call(what, lambda: self.api.request("GET", url))
        if response.status == 404:
            response.close(reuse=False)
            return None
        if response.status >= 400:
            raise self._failure(what, response.error())
        return response

    def inspect_image(self, ref: str) -> InspectedImage:
        """`docker image inspect`: raises NotFoundError when the daemon has no such image."""
        if ref not in self._inspected:
            self._inspect(ref)
        info = self._inspected[ref]
        if info is None:
            raise not_in_daemon(ref, self.host)
        return info

    def prefetch(self, refs: Iterable[str], with_manifests: Iterable[str] = ()) -> None:
        """Inspect these images at once, so the `inspect_image` calls that follow are answered
        from memory. Errors other than "not found" are left for those calls to raise.
        `with_manifests`: images asked with their manifests where the API gives them (1.48+),
        so `image_manifests` answers from memory too: one round trip for both."""
        asked = list(with_manifests)
        listed = set(asked) if asked and self.api_at_least((1, 48)) else set()
        refs = [*refs, *asked]
        wanted = [ref for ref in dict.fromkeys(refs) if not self._remembered(ref, ref in listed)]
        if not wanted or (len(wanted) == 1 and wanted[0] not in listed):
            return
        with ThreadPoolExecutor(min(INSPECT_THREADS, len(wanted))) as pool:
            for future in [pool.submit(self._inspect, ref, ref in listed) for ref in wanted]:
                future.exception()  # wait; not remembered, so raised again when asked for

    def _remembered(self, ref: str, manifests: bool) -> bool:
        return ref in self._inspected and (not manifests or ref in self._manifests)

    def inspect_image_now(self, ref: str) -> InspectedImage | None:
        """`inspect_image` asked now, neither from nor into what this client remembers, so it
        may run beside a call that changes the daemon; None where the daemon has no such
        image."""
        inspected = self.inspect_detached(ref)
        return None if inspected is None else InspectedImage.from_inspect(inspected)

    def inspect_detached(self, ref: str, manifests: bool = False) -> dict | None:
        """The daemon's inspect of `ref` (`manifests`: with them, where the API gives them),
        asked now and not remembered, so it may run beside a call that changes the daemon;
        `remember` it where nothing changed meanwhile. None where there is no such image."""
        try:
            return self._inspect_request(ref, manifests and self.api_at_least((1, 48)))
        except NotFoundError:
            return None

    def remember(
        self, ref: str, inspected: dict | None, manifests: bool = False
    ) -> InspectedImage | None:
        """Answer `inspect_image` for `ref` (and by the image's ID) with this inspect, None
        where the daemon has no such image; `image_manifests` too where it was asked with
        them (`manifests`, API 1.48+). Returns the image as `inspect_image` gives it."""
        if inspected is None:
            self._inspected[ref] = None
            return None
        info = InspectedImage.from_inspect(inspected)
        self._inspected[ref] = self._inspected[info.id] = info
        if manifests and self.api_at_least((1, 48)):
            listed = [e for e in inspected.get("Manifests") or [] if isinstance(e, dict)]
            self._manifests[ref] = self._manifests[info.id] = listed
        return info

    def _inspect_request(self, ref: str, manifests: bool = False) -> dict:
        """GET /images/{ref}/json: the daemon's inspect of one image (`manifests`: with them)."""
        params = {"manifests": 1} if manifests else None
        inspected = self._json(ref, "GET", "/images/{0}/json", ref, params=params)
        if not isinstance(inspected, dict):
            raise DaemonError(f"the Docker daemon sent an unreadable inspect of {ref}")
        return inspected

    def _inspect(self, ref: str, manifests: bool = False) -> None:
        try:
            inspected = self._inspect_request(ref, manifests)
        except NotFoundError:
            inspected = None
        self.remember(ref, inspected, manifests)

    def _forget(self) -> None:
        """This client is about to change what the daemon holds."""
        self.changes += 1
        self._image_ids = None
        self._listing = None  # asked before the change: not what `image_ids` answers after it
        self._inspected.clear()
        self._manifests.clear()

    def images_changed(self) -> None:
        """What the daemon holds was changed by other means (its containerd): ask again."""
        self._forget()

    def pull(self, ref: str) -> None:
        """`docker pull` (the daemon fetches from its registry), through the docker SDK: it
        sends the credentials of the user's docker config as the docker CLI does."""
        import docker
        import docker.errors
        import requests

        self._forget()
        try:
            client = docker.DockerClient(base_url=self.host, version=self.info.api_version)
            client.api.timeout = self._timeout
            try:
                client.images.pull(ref)
            finally:
                client.close()
        except docker.errors.ImageNotFound as exc:
            raise not_in_daemon(f"the pull of {ref}", self.host) from exc
        except docker.errors.APIError as exc:
            raise DaemonError(
                f"the Docker daemon refused the pull of {ref}: {exc.explanation}"
            ) from exc
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            raise explain(self.host, exc) from exc

    def tag(self, image: str, ref: str) -> None:
        """`docker tag IMAGE REF` (REF with its tag)."""
        repository, _, tag = ref.rpartition(":")
        self._forget()
        self._json(
            f"tagging {ref}",
            "POST",
            "/images/{0}/tag",
            image,
            params={"repo": repository, "tag": tag},
        )

    def untag(self, ref: str) -> None:
        """`docker rmi -f REF`: the name goes, and the image with it if it was its last."""
        self._forget()
        self._json(f"removing {ref}", "DELETE", "/images/{0}", ref, params={"force": True})

    def remove_image(self, image_id: str) -> None:
        """`docker rmi IMAGE_ID` of an untagged image (not forced: one a container uses stays)."""
        self._forget()
        self._json(f"removing {image_id}", "DELETE", "/images/{0}", image_id)

    def labelled_images(self, label: str) -> list[dict]:
        """The image list's entries (ID, Created, Labels) of the images whose config has this
        label."""
        return self._image_list({"filters": json.dumps({"label": [label]})})

    def has_image(self, ref: str) -> bool:
        try:
            self.inspect_image(ref)
        except NotFoundError:
            return False
        return True

    def _image_list(self, params: Params | None = None) -> list[dict]:
        summaries = self._json("the image list", "GET", "/images/json", params=params)
        if not isinstance(summaries, list):
            raise DaemonError("the Docker daemon sent an unreadable image list")
        return [summary for summary in summaries if isinstance(summary, dict)]

    def image_ids(self) -> list[str]:
        """The IDs of every image the daemon holds: one list call, remembered until this
        client loads something."""
        if self._image_ids is None:
            listing, self._listing = self._listing, None
            summaries = self._image_list() if listing is None else listing.result()
            self._image_ids = [summary["Id"] for summary in summaries]
        return self._image_ids

    def list_images_soon(self) -> None:
        """Ask for the image list `image_ids` answers with now, in the background (once, when
        several threads ask for it at once)."""
        with self._listing_lock:
            if self._image_ids is None and self._listing is None:
                pool = ThreadPoolExecutor(1, thread_name_prefix="packcache-image-list")
                self._listing = pool.submit(self._image_list)
                pool.shutdown(wait=False)

    def image_tags(self) -> dict[str, str]:
        """Every tag the daemon has -> the ID of the image it names."""
        return {
            tag: summary["Id"]
            for summary in self._image_list()
            for tag in summary.get("RepoTags") or []
        }

    def image_diff_ids(self, image_id: str) -> list[str] | None:
        """An image's layer diffIDs (from its inspect); None if it is gone meanwhile."""
        try:
            info = self.inspect_image(image_id)
        except NotFoundError:
            return None
        return list(info.diff_ids)

    def content_available(self, ref: str, manifest_digest: str, content_size: int) -> bool:
        """On a containerd store with API 1.48+, is every blob of the image there?

        Older APIs cannot say; loads on them only reference blobs of images the daemon holds.
        """
        manifests = self.image_manifests(ref)
        if manifests is None:
            return _version_tuple(self.info.api_version) < (1, 48)
        for entry in manifests:
            if (entry.get("Descriptor") or {}).get("digest") == manifest_digest:
                size = (entry.get("Size") or {}).get("Content")
                return bool(entry.get("Available")) and (size is None or size >= content_size)
        return False

    def save(self, refs: Iterable[str]) -> BinaryIO:
        """One `docker save` stream for all `refs`, read as it arrives (never held whole)."""
        names = list(refs)
        what = ", ".join(names)
        response = self._open(what, "/images/get", params={"names": names})
        if response is None:
            raise not_in_daemon(what, self.host)
        task = self.progress.task(f"Saving {what} from the daemon")
        return CountingReader(response.raw, task)  # type: ignore[return-value]

    def load(self, chunks: Iterator[bytes], size: int | None = None) -> list[str]:
        """`docker load` of a stream of archive chunks (`size` bytes in all, if known: sent
        with that length instead of chunked); returns the daemon's status lines."""
        messages: list[str] = []
        self._forget()
        task = self.progress.task("Loading into the daemon")
        url = self.api.url("/images/load", params={"quiet": True})
        headers = {"Content-Type": "application/x-tar"}
        if size is not None:  # each chunk is sent as it is, not copied into a chunk frame
            headers["Content-Length"] = str(size)

        def send() -> list[Any]:
            response = self.api.request("POST", url, body=counted(chunks, task), headers=headers)
            if response.status >= 400:
                raise response.error()
            return list(json_stream(response))

        for event in self._call("the load", send):
            if not isinstance(event, dict):
                continue
            if "error" in event or "errorDetail" in event:
                detail = (event.get("errorDetail") or {}).get("message") or event.get("error")
                raise DaemonError(f"the Docker daemon rejected the load: {detail}")
            if event.get("stream"):
                messages.append(str(event["stream"]).strip())
        return messages

    def is_local(self) -> bool:
        """Is the daemon on this host (a unix socket), so that paths it reports are ours?"""
        return self.host.startswith("unix://")

    def api_at_least(self, minimum: tuple[int, int]) -> bool:
        return _version_tuple(self.info.api_version) >= minimum

    def image_manifests(self, ref: str) -> list[dict] | None:
        """API 1.48+: the manifests of an image on a containerd store (`manifests=1`), each
        with its descriptor and whether its content is available; None on older APIs."""
        if not self.api_at_least((1, 48)):
            return None
        if ref in self._manifests:
            return self._manifests[ref]
        url = self.api.url("/images/{0}/json", ref, params={"manifests": 1})
        try:
            inspected, _ = self.api.call("GET", url)
        except EngineApiError:
            return None
        except (AnswerTooLarge, ValueError, OSError, http.client.HTTPException) as exc:
            raise self._failure(ref, exc) from exc
        if not isinstance(inspected, dict):
            return None
        return [entry for entry in inspected.get("Manifests") or [] if isinstance(entry, dict)]

    # -- volumes and idle containers: reading a volume without running anything -------------

    def volumes(self) -> list[dict]:
        """Every volume: Name, Driver, Mountpoint."""
        listed = self._json("the volume list", "GET", "/volumes")
        return list((listed or {}).get("Volumes") or [])

    def create_idle_container(self, image: str, volume: str, target: str) -> str:
        """A container created (never started) from `image`, which the daemon holds, with
        `volume` mounted read-only at `target`: its files can then be read through the
        archive endpoint. The daemon does not pull a missing image on create."""
        mount = {
            "Target": target,
            "Source": volume,
            "Type": "volume",
            "ReadOnly": True,
            "VolumeOptions": {"NoCopy": True},
        }
        spec = {
            "Image": image,
            "Cmd": ["packcache-never-started"],
            "Entrypoint": ["packcache-never-started"],
            "NetworkDisabled": True,
            "Labels": {"io.packcache.reader": volume},
            "HostConfig": {"Mounts": [mount], "NetworkMode": "none"},
        }
        url = self.api.url("/containers/create")
        created = self._call(
            f"creating a container to read volume {volume}",
            lambda: self.api.call("POST", url, json_body=spec)[0],
        )
        return str(created["Id"])

    def remove_container(self, container: str) -> None:
        """`docker rm -f` (its anonymous volumes kept: `volume` mounts are never removed)."""
        what = f"removing container {container[:12]}"
        self._json(what, "DELETE", "/containers/{0}", container, params={"force": True})

    def path_stat(self, container: str, path: str) -> dict | None:
        """What the archive endpoint says of a path in a container (name, size, mode,
        linkTarget), or None where there is nothing."""
        url = self.api.url("/containers/{0}/archive", container, params={"path": path})
        response = self._call(f"the stat of {path}", lambda: self.api.request("HEAD", url))
        if response.status == 404:
            response.close()
            return None
        if response.status >= 400:
            raise self._failure(f"the stat of {path}", response.error())
        response.close()
        header = response.headers.get("X-Docker-Container-Path-Stat") or ""
        try:
            stat = json.loads(base64.b64decode(header, validate=True)[: 1 << 16])
        except ValueError as exc:
            raise DaemonError(f"the Docker daemon sent an unreadable stat of {path}") from exc
        return stat if isinstance(stat, dict) else None

    def archive(self, container: str, path: str) -> BinaryIO:
        """A tar stream of a path in a container, read as it arrives."""
        # Not gzip (the client asks for identity): the daemon compresses this stream for a
        # client that accepts it, which costs it far more than sending the bytes over a local
        # socket.
        response = self._open(
            f"reading {path}", "/containers/{0}/archive", container, params={"path": path}
        )
        if response is None:
            raise NotFoundError(f"no {path} in container {container[:12]}")
        return response.raw  # type: ignore[no-any-return]

    def local_image_config(self, image_id: str) -> bytes | None:
        """A graphdriver image's config read from the daemon's own image store, when the
        daemon is on this host and its files are readable: what `docker save` would give,
        without the save. None when it cannot be read or its bytes are not `image_id`'s."""
        if self.info.containerd_store or not (self.is_local() and self.info.root_dir):
            return None
        hex_id = image_id.removeprefix("sha256:")
        if len(hex_id) != 64 or not all(c in "0123456789abcdef" for c in hex_id):
            return None
        path = os.path.join(
            self.info.root_dir, "image", self.info.driver, "imagedb", "content", "sha256", hex_id
        )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat_mode.S_ISREG(info.st_mode) or info.st_size > MAX_CONFIG:
                return None
            data = file.read(MAX_CONFIG + 1)
        if hashlib.sha256(data).hexdigest() != hex_id:
            return None
        return data
