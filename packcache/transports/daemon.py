"""The Docker daemon, through the docker SDK: what it is, what it holds, save and load streams.

Errors become one clear PackcacheError naming the socket, so a user knows what to fix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat as stat_mode
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import docker
import docker.errors
import requests

from packcache.errors import NotFoundError, PackcacheError, not_in_daemon
from packcache.image.inspected import InspectedImage
from packcache.progress import NO_PROGRESS, CountingReader, Progress, counted

MIN_API_VERSION = "1.41"  # Engine 20.10, the oldest engine in the test matrix
DEFAULT_HOST = "unix:///var/run/docker.sock"
# Inspects overlap: an operation asks about a dozen images at once, each a short daemon round trip.
INSPECT_THREADS = 8
MAX_CONFIG = 16 << 20  # an image config larger than this is not one


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
    if any(s in text for s in ("No such file", "Connection refused", "Connection aborted")):
        return DaemonError(
            f"cannot reach the Docker daemon at {host}: is it running? "
            "(set DOCKER_HOST or --host to use another)"
        )
    if isinstance(exc, requests.Timeout) or "timed out" in text:
        return DaemonError(f"the Docker daemon at {host} does not answer (timed out)")
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
        self._image_ids: list[str] | None = None
        # What `inspect_image` returned per ref and per image ID (None: not found), until this
        # client changes the daemon (load, pull): one operation asks about the same images
        # several times, by tag and by ID.
        self._inspected: dict[str, InspectedImage | None] = {}
        try:
            self.client = docker.DockerClient(
                base_url=self.host, version="auto", timeout=HANDSHAKE_TIMEOUT_S
            )
            raw_info = self.client.api.info()
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            raise explain(self.host, exc) from exc
        except ValueError as exc:  # a malformed URL, e.g. tcp://[::1
            raise DaemonError(f"invalid Docker host {self.host!r}: {exc}") from exc
        self.client.api.timeout = timeout
        self.raw_info: dict = raw_info  # `docker info` as the daemon sent it
        api_version = self.client.api.api_version
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

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise not_in_daemon(what, self.host) from exc
        except docker.errors.APIError as exc:
            raise DaemonError(f"the Docker daemon refused {what}: {exc.explanation}") from exc
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            raise explain(self.host, exc) from exc

    def inspect_image(self, ref: str) -> InspectedImage:
        """`docker image inspect`: raises NotFoundError when the daemon has no such image."""
        if ref not in self._inspected:
            self._inspect(ref)
        info = self._inspected[ref]
        if info is None:
            raise not_in_daemon(ref, self.host)
        return info

    def prefetch(self, refs: Iterable[str]) -> None:
        """Inspect these images at once, so the `inspect_image` calls that follow are answered
        from memory. Errors other than "not found" are left for those calls to raise."""
        wanted = [ref for ref in dict.fromkeys(refs) if ref not in self._inspected]
        if len(wanted) < 2:
            return
        with ThreadPoolExecutor(min(INSPECT_THREADS, len(wanted))) as pool:
            for future in [pool.submit(self._inspect, ref) for ref in wanted]:
                future.exception()  # wait; not remembered, so raised again when asked for

    def _inspect(self, ref: str) -> None:
        try:
            info = InspectedImage.from_inspect(self._call(ref, self.client.api.inspect_image, ref))
        except NotFoundError:
            self._inspected[ref] = None
            return
        self._inspected[ref] = self._inspected[info.id] = info

    def _forget(self) -> None:
        """This client is about to change what the daemon holds."""
        self._image_ids = None
        self._inspected.clear()

    def images_changed(self) -> None:
        """What the daemon holds was changed by other means (its containerd): ask again."""
        self._forget()

    def pull(self, ref: str) -> None:
        """`docker pull` (the daemon fetches from its registry)."""
        self._forget()
        self._call(f"the pull of {ref}", self.client.images.pull, ref)

    def tag(self, image: str, ref: str) -> None:
        """`docker tag IMAGE REF` (REF with its tag)."""
        repository, _, tag = ref.rpartition(":")
        self._forget()
        self._call(f"tagging {ref}", self.client.api.tag, image, repository, tag)

    def untag(self, ref: str) -> None:
        """`docker rmi -f REF`: the name goes, and the image with it if it was its last."""
        self._forget()
        self._call(f"removing {ref}", self.client.api.remove_image, ref, force=True)

    def has_image(self, ref: str) -> bool:
        try:
            self.inspect_image(ref)
        except NotFoundError:
            return False
        return True

    def image_ids(self) -> list[str]:
        """The IDs of every image the daemon holds: one list call, remembered until this
        client loads something."""
        if self._image_ids is None:
            summaries = self._call("the image list", self.client.api.images)
            self._image_ids = [summary["Id"] for summary in summaries]
        return self._image_ids

    def image_tags(self) -> dict[str, str]:
        """Every tag the daemon has -> the ID of the image it names."""
        summaries = self._call("the image list", self.client.api.images)
        return {
            tag: summary["Id"] for summary in summaries for tag in summary.get("RepoTags") or []
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
        if _version_tuple(self.info.api_version) < (1, 48):
            return True
        api = self.client.api
        response = self._call(
            ref, api._get, api._url("/images/{0}/json", ref), params={"manifests": 1}
        )
        if response.status_code != 200:
            return False
        for entry in response.json().get("Manifests") or []:
            if (entry.get("Descriptor") or {}).get("digest") == manifest_digest:
                size = (entry.get("Size") or {}).get("Content")
                return bool(entry.get("Available")) and (size is None or size >= content_size)
        return False

    def save(self, refs: Iterable[str]) -> BinaryIO:
        """One `docker save` stream for all `refs`, read as it arrives (never held whole)."""
        names = list(refs)
        api = self.client.api
        response = self._call(
            ", ".join(names),
            api._get,  # the SDK's get_image takes one name; /images/get takes several
            api._url("/images/get"),
            params={"names": names},
            stream=True,
        )
        if response.status_code == 404:
            raise not_in_daemon(", ".join(names), self.host)
        self._call(", ".join(names), api._raise_for_status, response)
        response.raw.decode_content = True
        task = self.progress.task(f"Saving {', '.join(names)} from the daemon")
        return CountingReader(response.raw, task)  # type: ignore[return-value]

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        """`docker load` of a stream of archive chunks; returns the daemon's status lines."""
        messages: list[str] = []
        self._forget()
        task = self.progress.task("Loading into the daemon")
        events = self._call(
            "the load",
            lambda: list(self.client.api.load_image(counted(chunks, task), quiet=True)),
        )
        for event in events:
            if "error" in event or "errorDetail" in event:
                detail = event.get("errorDetail", {}).get("message") or event.get("error")
                raise DaemonError(f"the Docker daemon rejected the load: {detail}")
            if event.get("stream"):
                messages.append(event["stream"].strip())
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
        api = self.client.api
        response = self._call(
            ref, api._get, api._url("/images/{0}/json", ref), params={"manifests": 1}
        )
        if response.status_code != 200:
            return None
        return list(response.json().get("Manifests") or [])

    # -- volumes and idle containers: reading a volume without running anything -------------

    def volumes(self) -> list[dict]:
        """Every volume: Name, Driver, Mountpoint."""
        listed = self._call("the volume list", self.client.api.volumes)
        return list((listed or {}).get("Volumes") or [])

    def create_idle_container(self, image: str, volume: str, target: str) -> str:
        """A container created (never started) from `image`, which the daemon holds, with
        `volume` mounted read-only at `target`: its files can then be read through the
        archive endpoint. The daemon does not pull a missing image on create."""
        api = self.client.api
        mount = docker.types.Mount(target, volume, type="volume", read_only=True, no_copy=True)
        created = self._call(
            f"creating a container to read volume {volume}",
            api.create_container,
            image,
            command=["packcache-never-started"],
            entrypoint=["packcache-never-started"],
            network_disabled=True,
            labels={"io.packcache.reader": volume},
            host_config=api.create_host_config(mounts=[mount], network_mode="none"),
        )
        return str(created["Id"])

    def remove_container(self, container: str) -> None:
        """`docker rm -f` (its anonymous volumes kept: `volume` mounts are never removed)."""
        self._call(
            f"removing container {container[:12]}",
            self.client.api.remove_container,
            container,
            force=True,
        )

    def path_stat(self, container: str, path: str) -> dict | None:
        """What the archive endpoint says of a path in a container (name, size, mode,
        linkTarget), or None where there is nothing."""
        api = self.client.api
        url = api._url("/containers/{0}/archive", container)
        response = self._call(f"the stat of {path}", api.head, url, params={"path": path})
        if response.status_code == 404:
            return None
        self._call(f"the stat of {path}", api._raise_for_status, response)
        header = response.headers.get("X-Docker-Container-Path-Stat") or ""
        try:
            stat = json.loads(base64.b64decode(header, validate=True)[: 1 << 16])
        except ValueError as exc:
            raise DaemonError(f"the Docker daemon sent an unreadable stat of {path}") from exc
        return stat if isinstance(stat, dict) else None

    def archive(self, container: str, path: str) -> BinaryIO:
        """A tar stream of a path in a container, read as it arrives."""
        api = self.client.api
        url = api._url("/containers/{0}/archive", container)
        # Not gzip: the daemon compresses this stream for a client that accepts it, which
        # costs it far more than sending the bytes over a local socket.
        response = self._call(
            f"reading {path}",
            api._get,
            url,
            params={"path": path},
            stream=True,
            headers={"Accept-Encoding": "identity"},
        )
        if response.status_code == 404:
            raise NotFoundError(f"no {path} in container {container[:12]}")
        self._call(f"reading {path}", api._raise_for_status, response)
        response.raw.decode_content = True
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
