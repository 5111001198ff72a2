"""The run image of a daemon rebase, chosen and fetched as pack does (`--pull-policy`).

Choice (pack's pkg/client/common.go getBestRunMirror): the candidates are the mirrors pack's
config names for the run image, then the image the app's metadata records, then that
metadata's mirrors. Those the policy can reach are kept (always: its registry has it;
if-not-present: the daemon or its registry has it; never: the daemon has it); the first in the
registry of the result's name wins, else the first kept, else the recorded image.

Fetch (pack's pkg/image/fetcher.go): `always` pulls the image into the cache (registry ->
cache, see registry_pull) and loads it into the daemon, which is sent only the layers it lacks;
a registry that does not have it falls back to the daemon's copy, as pack does.
`if-not-present` does that only when the daemon lacks it; `never` never pulls. The platform
pulled is the app image's os/arch (pack's target), else the daemon's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.image.cnb import LifecycleMetadata
from packcache.image.inspected import InspectedImage
from packcache.operations.loading import LoadReport, load_config
from packcache.operations.pack_config import PackConfig
from packcache.store.store import Lease, Store
from packcache.transports.daemon import Daemon, EngineInfo
from packcache.transports.registry import ImageName, Platform, RegistryClient, RegistryOptions
from packcache.transports.registry_pull import PullReport, pull_image


class PullPolicy(StrEnum):
    ALWAYS = "always"
    IF_NOT_PRESENT = "if-not-present"
    NEVER = "never"


class RunImageError(PackcacheError):
    """The run image cannot be had as the pull policy allows; nothing was changed."""


def parse_pull_policy(text: str, source: str = "--pull-policy") -> PullPolicy:
    try:
        return PullPolicy(text)
    except ValueError:
        choices = ", ".join(policy.value for policy in PullPolicy)
        raise UsageError(f"invalid pull policy {text!r} ({source}): choose {choices}") from None


def resolve_pull_policy(flag: str | None, config: PackConfig) -> PullPolicy:
    """The flag, else pack's config `pull-policy`, else pack's default `always`."""
    if flag:
        return parse_pull_policy(flag)
    if config.pull_policy:
        return parse_pull_policy(config.pull_policy, f"pull-policy in {config.path}")
    return PullPolicy.ALWAYS


# `docker info` names the architecture as uname does; registries as Go does.
_UNAME_ARCH = {
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
}


def daemon_platform(info: EngineInfo) -> Platform:
    architecture, variant = _UNAME_ARCH.get(info.architecture, (info.architecture, None))
    return Platform(info.os or "linux", architecture or "amd64", variant)


def app_platform(app: InspectedImage, info: EngineInfo) -> Platform:
    """pack's target for the run image: the app's os/arch; the daemon's where it names none."""
    if app.os and app.architecture:
        return Platform(app.os, app.architecture, app.variant or None)
    return daemon_platform(info)


class Registries:
    """One client per registry host for the whole rebase, closed at the end."""

    def __init__(self, options: RegistryOptions) -> None:
        self.options = options
        self._clients: dict[str, RegistryClient] = {}

    def client(self, name: ImageName) -> RegistryClient:
        if name.api_host not in self._clients:
            self._clients[name.api_host] = RegistryClient(name.api_host, self.options)
        return self._clients[name.api_host]

    def has(self, ref: str) -> bool:
        """pack's read-access check: any failure (unreachable, refused, unknown) is a no."""
        try:
            name = ImageName.parse(ref)
            return self.client(name).has_manifest(name.repository, name.reference)
        except PackcacheError:
            return False

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _reachable(ref: str, policy: PullPolicy, daemon: Daemon, registries: Registries) -> bool:
    if policy is PullPolicy.NEVER:
        return daemon.has_image(ref)
    if policy is PullPolicy.IF_NOT_PRESENT and daemon.has_image(ref):
        return True
    return registries.has(ref)


def _registry_of(ref: str) -> str | None:
    try:
        return ImageName.parse(ref).host
    except UsageError:
        return None


def choose_run_image(
    metadata: LifecycleMetadata,
    result_name: str,
    config: PackConfig,
    policy: PullPolicy,
    daemon: Daemon,
    registries: Registries,
) -> str | None:
    """pack's choice among the run image and its mirrors (see the module doc); None when the
    metadata names no run image."""
    recorded = metadata.run_image
    if recorded.image is None:
        return None
    candidates = list(
        dict.fromkeys([*config.run_image_mirrors.get(recorded.image, []), *recorded.names()])
    )
    if len(candidates) == 1:  # nothing to choose: the fetch says what is wrong with it
        return candidates[0]
    kept = [ref for ref in candidates if _reachable(ref, policy, daemon, registries)]
    preferred = _registry_of(result_name)
    for ref in kept:
        if preferred is not None and _registry_of(ref) == preferred:
            return ref
    return kept[0] if kept else recorded.image


@dataclass
class RunImageFetch:
    ref: str  # the run image as the daemon now holds it
    policy: str
    pulled: PullReport | None = None
    loaded: LoadReport | None = None
    fell_back: bool = False  # `always`, but its registry has no such image: the daemon's used


def _pull_and_load(
    store: Store,
    daemon: Daemon,
    ref: str,
    platform: Platform,
    registries: Registries,
    lease: Lease,
) -> tuple[PullReport, LoadReport | None]:
    name = ImageName.parse(ref)
    if name.reference.startswith("sha256:"):
        raise RunImageError(
            f"run image {ref} is named by digest: packcache pulls run images by tag (pull it "
            "with docker pull, and use --pull-policy never)"
        )
    pulled = pull_image(store, registries.client(name), name, lease=lease, platform=platform)
    try:
        held = daemon.inspect_image(ref).id
    except NotFoundError:
        held = None
    if held in (pulled.config_digest, pulled.manifest_digest):
        return pulled, None  # the daemon already holds this very image under this name
    config = store.image_config(pulled.config_digest)
    return pulled, load_config(store, daemon, config, [ref], lease=lease)


def fetch_run_image(
    store: Store,
    daemon: Daemon,
    ref: str,
    *,
    policy: PullPolicy,
    platform: Platform,
    registries: Registries,
    lease: Lease | None,
    pack_method: bool = False,
) -> RunImageFetch:
    """Make sure the daemon holds run image `ref` as `policy` says (see the module doc);
    `pack_method` pulls with `docker pull` as pack does, leaving the cache alone."""
    fetch = RunImageFetch(ref, policy.value)
    if policy is PullPolicy.NEVER or (
        policy is PullPolicy.IF_NOT_PRESENT and daemon.has_image(ref)
    ):
        if not daemon.has_image(ref):
            raise RunImageError(
                f"run image {ref} is not in the Docker daemon and the pull policy is never"
            )
        return fetch
    try:
        if pack_method:
            daemon.pull(ref)
        elif lease is None:
            with store.lease("run image pull") as own:
                fetch.pulled, fetch.loaded = _pull_and_load(
                    store, daemon, ref, platform, registries, own
                )
        else:
            fetch.pulled, fetch.loaded = _pull_and_load(
                store, daemon, ref, platform, registries, lease
            )
    except NotFoundError as exc:
        if policy is PullPolicy.IF_NOT_PRESENT or not daemon.has_image(ref):
            raise RunImageError(
                f"run image {ref} is neither in the Docker daemon nor in its registry ({exc})"
            ) from exc
        fetch.fell_back = True
    return fetch


@dataclass(frozen=True)
class RunImagePull:
    """How a rebase gets its run image: pack's pull policy, config and registry options."""

    policy: PullPolicy
    config: PackConfig
    options: RegistryOptions


def prepare_run_image(
    store: Store,
    daemon: Daemon,
    app: InspectedImage,
    metadata: LifecycleMetadata,
    *,
    result_name: str,
    run_image: str | None,
    pull: RunImagePull,
    lease: Lease | None,
    pack_method: bool = False,
) -> RunImageFetch | None:
    """Choose the run image (`run_image` if given) and fetch it as `pull` says; None when
    there is none to choose (the rebase says so)."""
    registries = Registries(pull.options)
    try:
        ref = run_image or choose_run_image(
            metadata, result_name, pull.config, pull.policy, daemon, registries
        )
        if ref is None:
            return None
        return fetch_run_image(
            store,
            daemon,
            ref,
            policy=pull.policy,
            platform=app_platform(app, daemon.info),
            registries=registries,
            lease=lease,
            pack_method=pack_method,
        )
    finally:
        registries.close()
