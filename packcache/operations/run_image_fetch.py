"""The images of a daemon rebase, chosen and fetched as pack does (`--pull-policy`).

Choice (pack's pkg/client/common.go getBestRunMirror): the candidates are the mirrors pack's
config names for the run image, then the image the app's metadata records, then that
metadata's mirrors. Those the policy can reach are kept (always: its registry has it;
if-not-present: the daemon or its registry has it; never: the daemon has it); the first in the
registry of the result's name wins, else the first kept, else the recorded image.

Fetch (pack's pkg/image/fetcher.go, for the app image and then the run image): `always`
pulls the image into the cache (registry -> cache, see operations/pulling) and loads it into the
daemon, which is sent only the layers it lacks; a registry that does not have it (or refuses
it, which docker reports as not found) falls back to the daemon's copy, as pack does.
`if-not-present` does that only when the daemon lacks it; `never` never pulls. The app is
pulled for the daemon's platform (pack gives no target), the run image for the app's os/arch.
A name with a digest (`repo@sha256:...`) is pulled under `always` as docker pulls it (the
registry is asked; layers the cache holds are not downloaded) but stays in the cache, as
docker load cannot name an image by digest: the rebase reads it there and the load sends
its layers; under the other policies the cache's copy serves as the daemon's would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.image.cnb import LifecycleMetadata
from packcache.image.inspected import InspectedImage
from packcache.jsondoc import config_diff_ids, strict_loads
from packcache.operations.loading import LoadReport, load_config
from packcache.operations.pack_config import PackConfig
from packcache.refs import looks_like_id
from packcache.store.store import Lease, Store
from packcache.transports.daemon import Daemon, EngineInfo
from packcache.transports.registry import (
    AccessDeniedError,
    ImageName,
    Platform,
    RegistryClients,
    RegistryOptions,
)

if TYPE_CHECKING:
    from packcache.operations.pulling import PullReport


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


def _reachable(ref: str, policy: PullPolicy, daemon: Daemon, registries: RegistryClients) -> bool:
    if policy is PullPolicy.NEVER:
        return daemon.has_image(ref)
    if policy is PullPolicy.IF_NOT_PRESENT and daemon.has_image(ref):
        return True
    return registries.readable(ref)


def _registry_of(ref: str) -> str | None:
    try:
        return ImageName.parse(ref).host
    except UsageError:
        return None


def choose_run_image(
    metadata: LifecycleMetadata,
    preferred_registry: str | None,
    config_mirrors: Mapping[str, list[str]],
    reachable: Callable[[str], bool],
) -> str | None:
    """pack's getBestRunMirror, for the daemon and the publish rebase alike: the candidates
    (pack's config mirrors of the recorded run image, the recorded image, its mirrors) that
    are `reachable`, the first in `preferred_registry`, else the first, else the recorded
    image; None when the metadata names no run image."""
    recorded = metadata.run_image
    if recorded.image is None:
        return None
    candidates = list(dict.fromkeys([*config_mirrors.get(recorded.image, []), *recorded.names()]))
    if len(candidates) == 1:  # nothing to choose: whoever fetches it says what is wrong
        return candidates[0]
    kept = [ref for ref in candidates if reachable(ref)]
    for ref in kept:
        if preferred_registry is not None and _registry_of(ref) == preferred_registry:
            return ref
    return kept[0] if kept else recorded.image


@dataclass
class ImageFetch:
    """How the pull policy got one image of a rebase (the app or the run image)."""

    ref: str  # the image as named
    policy: str
    pulled: PullReport | None = None
    loaded: LoadReport | None = None
    fell_back: bool = False  # `always`, but its registry has no such image: the daemon's used
    # A digest-named image the cache holds but the daemon does not by that name (docker
    # load cannot name an image by digest): its config digest; the rebase reads it there.
    cached: str | None = None


def _digest_of_ref(ref: str) -> str | None:
    try:
        reference = ImageName.parse(ref).reference
    except UsageError:
        return None
    return reference if reference.startswith("sha256:") else None


def cached_by_digest(store: Store, ref: str) -> str | None:
    """The config digest of the image `repo@sha256:...` names, if the cache holds its
    manifest, config and every layer (a digest names the same image everywhere)."""
    digest = _digest_of_ref(ref)
    manifest = store.manifest(digest) if digest else None
    if manifest is None:
        return None
    try:
        config_digest = strict_loads(manifest, f"the manifest of {ref}")["config"]["digest"]
        config = strict_loads(store.image_config(config_digest), f"the config of {ref}")
    except (PackcacheError, KeyError, TypeError):
        return None
    diff_ids = config_diff_ids(config)
    return config_digest if store.cached_diff_ids(diff_ids) == set(diff_ids) else None


def described_in_cache(store: Store, fetch: ImageFetch | None) -> InspectedImage | None:
    """The image a fetch left in the cache only (see ImageFetch.cached), as a rebase reads
    an image; None where the daemon holds it."""
    if fetch is None or fetch.cached is None:
        return None
    config = store.image_config(fetch.cached)
    return InspectedImage.from_config(strict_loads(config, f"the config of {fetch.ref}"),
                                      fetch.cached)  # fmt: skip


def _pull_and_load(
    store: Store,
    daemon: Daemon,
    ref: str,
    platform: Platform,
    registries: RegistryClients,
    lease: Lease,
) -> tuple[PullReport, LoadReport | None, str | None]:
    """Pull `ref` into the cache and load it into the daemon under that name, sending only
    what it lacks; a digest-named image stays in the cache (returned: its config digest)."""
    name = ImageName.parse(ref)
    from packcache.operations.pulling import pull_image  # only a pull needs it

    pulled = pull_image(store, registries.for_name(name), name, lease=lease, platform=platform)
    try:
        held = daemon.inspect_image(ref).id
    except NotFoundError:
        held = None
    if held in (pulled.config_digest, pulled.manifest_digest):
        return pulled, None, None  # the daemon already holds this very image under this name
    if name.reference.startswith("sha256:"):
        return pulled, None, pulled.config_digest
    config = store.image_config(pulled.config_digest)
    return pulled, load_config(store, daemon, config, [ref], lease=lease), None


def fetch_image(
    store: Store,
    daemon: Daemon,
    ref: str,
    *,
    policy: PullPolicy,
    platform: Platform,
    registries: RegistryClients,
    lease: Lease | None,
    pack_method: bool = False,
    what: str = "run image",
) -> ImageFetch:
    """Make sure the daemon holds `ref` as `policy` says (see the module doc);
    `pack_method` pulls with `docker pull` as pack does, leaving the cache alone."""
    fetch = ImageFetch(ref, policy.value)
    in_daemon = daemon.has_image(ref)
    if policy is not PullPolicy.ALWAYS and not in_daemon and not pack_method:
        fetch.cached = cached_by_digest(store, ref)  # pulling it again would change nothing
    if policy is PullPolicy.NEVER or (
        policy is PullPolicy.IF_NOT_PRESENT and (in_daemon or fetch.cached)
    ):
        if not in_daemon and fetch.cached is None:
            raise RunImageError(
                f"{what} {ref} is not in the Docker daemon and the pull policy is never"
            )
        return fetch
    try:
        if pack_method:
            daemon.pull(ref)
        elif lease is None:
            with store.lease(f"{what} pull") as own:
                fetch.pulled, fetch.loaded, fetch.cached = _pull_and_load(
                    store, daemon, ref, platform, registries, own
                )
        else:
            fetch.pulled, fetch.loaded, fetch.cached = _pull_and_load(
                store, daemon, ref, platform, registries, lease
            )
    except (NotFoundError, AccessDeniedError) as exc:
        if policy is PullPolicy.IF_NOT_PRESENT or not daemon.has_image(ref):
            raise RunImageError(
                f"{what} {ref} is neither in the Docker daemon nor in its registry ({exc})"
            ) from exc
        fetch.fell_back = True
    return fetch


class RunImagePull(NamedTuple):
    """How a rebase gets its images: pack's pull policy, config and registry options."""

    policy: PullPolicy
    config: PackConfig
    options: RegistryOptions


@dataclass
class RebaseFetch:
    app_ref: (
        str  # the app image as read: its name, on its registry mirror if pack's config names one
    )
    app: ImageFetch | None  # None: named by ID or digest, or the policy is never
    run: ImageFetch | None  # None: the app is not in the daemon or names no run image


def _pullable_app(ref: str) -> bool:
    """pack pulls the app by name; an ID or digest names what the daemon holds already."""
    return not looks_like_id(ref) and _digest_of_ref(ref) is None


def fetch_rebase_images(
    store: Store,
    daemon: Daemon,
    image: str,
    *,
    result_name: str,
    run_image: str | None,
    pull: RunImagePull,
    lease: Lease | None,
    pack_method: bool = False,
) -> RebaseFetch:
    """pack's daemon rebase fetches: the app image `image` with the pull policy (no target:
    the daemon's platform), then the run image chosen for it (`run_image` if given) with
    the app's platform, each under its registry mirror's name where pack's config names
    one (the choice among run image mirrors reads the names as they are, as pack's does).
    Under `never` the app is left to the rebase, which names the way out when the daemon
    lacks it."""
    registries = RegistryClients(pull.options)
    app_ref = pull.config.translate(image)
    try:
        app_fetch = None
        if pull.policy is not PullPolicy.NEVER and _pullable_app(app_ref):
            app_fetch = fetch_image(
                store, daemon, app_ref, policy=pull.policy,
                platform=daemon_platform(daemon.info), registries=registries, lease=lease,
                pack_method=pack_method, what="image",
            )  # fmt: skip
        try:
            app = daemon.inspect_image(app_ref)
        except NotFoundError:
            return RebaseFetch(app_ref, app_fetch, None)  # the rebase says so
        metadata = LifecycleMetadata.from_labels(app_ref, app.labels)
        ref = run_image or choose_run_image(
            metadata,
            _registry_of(result_name),
            pull.config.run_image_mirrors,
            lambda candidate: _reachable(candidate, pull.policy, daemon, registries),
        )
        if ref is None:
            return RebaseFetch(app_ref, app_fetch, None)
        run_fetch = fetch_image(
            store, daemon, pull.config.translate(ref), policy=pull.policy,
            platform=app_platform(app, daemon.info), registries=registries, lease=lease,
            pack_method=pack_method,
        )  # fmt: skip
        return RebaseFetch(app_ref, app_fetch, run_fetch)
    finally:
        registries.close()
