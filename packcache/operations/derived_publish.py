"""`packcache create-builder NAME --from-builder BUILDER ... --publish`: where the builder
derived from is read when the result goes to a registry, and its layers made pushable.

The result is pushed by builder_publish as create-builder's is: the layers pack adds (and the
new buildpacks') are uploaded, the base builder's are skipped where the registry has them or
mounted from the base's repository. So the base builder is looked for as the pull policy says,
as pack's fetcher does: `always` asks its registry first (manifest and config, never a layer)
and falls back to a local copy only when the registry has none; `if-not-present` takes the
daemon's or the cache's copy first. A base read from the daemon whose layers the cache lacks is
read once with `docker save` (nothing else holds its bytes); one in the cache is pushed from it.
"""

from __future__ import annotations

from packcache.errors import NotFoundError
from packcache.operations.builder_fetch import CACHE, DAEMON, BuilderFetcher, FetchedImage
from packcache.operations.importing import import_images
from packcache.operations.run_image_fetch import PullPolicy
from packcache.transports.daemon import Daemon
from packcache.transports.registry import AccessDeniedError


def builder_to_publish(fetcher: BuilderFetcher, daemon: Daemon, ref: str) -> FetchedImage:
    """The base builder as the policy finds it (see the module doc)."""
    if fetcher.policy is not PullPolicy.ALWAYS:
        local = _local_builder(fetcher, daemon, ref)
        if local is not None:
            return local
    try:
        return fetcher.image(ref, "builder")  # a publish's fetcher reads no layer
    except (NotFoundError, AccessDeniedError) as exc:
        local = _local_builder(fetcher, daemon, ref)
        if local is None:
            raise NotFoundError(
                f"builder {ref} is neither in its registry, the Docker daemon nor the cache ({exc})"
            ) from exc
        return local


def _local_builder(fetcher: BuilderFetcher, daemon: Daemon, ref: str) -> FetchedImage | None:
    if daemon.has_image(ref):
        fetched = FetchedImage(ref, daemon.inspect_image(ref), DAEMON)
    else:
        cached = fetcher.cached(ref)
        if cached is None:
            return None
        fetched = cached
    fetcher.fetched.append(fetched)
    return fetched


def cache_builder_layers(fetcher: BuilderFetcher, daemon: Daemon, base: FetchedImage) -> bool:
    """Every layer of a base builder read from the daemon in the cache (held by the lease):
    read with `docker save` when some is missing. Whether it was saved."""
    if base.source not in (DAEMON, CACHE):
        return False
    wanted = set(base.image.diff_ids)
    if fetcher.lease.hold(wanted) == wanted:
        return False
    import_images(fetcher.store, daemon, [base.ref], lease=fetcher.lease)
    return True
