"""A `docker load` into a graphdriver begun as soon as a pull's manifests are read, before the
image's config is known: create-builder's builder, whose own layers (lifecycle, order, stack,
env) are written while the build image and buildpackages still download.

A graphdriver's loader (moby image/tarexport/load.go) unpacks the whole archive into a temp
directory before it reads manifest.json, so the archive may name its members freely and carry
them in any order: each downloaded layer is sent, named by its diffID, as soon as the cache
staged (verified) it; then, once the config is known (`load`), the layers still to send,
placeholders for those the daemon holds, the config and the manifest, which lists the layers
sent early under the names they were sent by. Until then the load waits on the connection.

A failed download, or an operation that ends before its config (`abandon`), ends the archive
before its manifest: the daemon refuses the load and keeps nothing of it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from packcache.archive.load_writer import LoadLayer, layer_member, legacy_archive
from packcache.errors import PackcacheError
from packcache.image import manifest as oci
from packcache.operations.load_planners import (
    REUSE,
    GraphdriverPlanner,
    LoadArchive,
    planner_for,
)
from packcache.operations.streamed_pull import StreamedPull
from packcache.store.store import Store
from packcache.streams import read_ahead
from packcache.transports.daemon import Daemon

ABANDON_WAIT = 30.0  # seconds a load abandoned is given to end (the daemon drops it)


class _Abandoned(PackcacheError):
    """The operation ended before the image's config was known."""


class EarlyLoad(GraphdriverPlanner):
    """A graphdriver load already sending `pull`'s layers (see the module doc); `load` ends
    it with the image's config. A second load (planned with every layer, when the daemon did
    not keep the first) is one of its own."""

    def __init__(self, store: Store, daemon: Daemon, pull: StreamedPull, base: list[str]) -> None:
        super().__init__(store, daemon)
        self._pull = pull
        # The layers the daemon lacks: those of the base image (first in the image, so their
        # chains are known now) it holds are left for the plan to name.
        held = {d for d, h in zip(base, self.held(base, REUSE), strict=True) if h is not None}
        self._early = {d: layer for d, layer in pull.layers().items() if d not in held}
        self._sent: dict[str, str] = {}  # diffID -> the member it was sent as
        # What ends the archive, made once the layers sent early are known; None: abandoned.
        self._rest: queue.SimpleQueue[Callable[[], Iterator[bytes]] | None] = queue.SimpleQueue()
        self._counter = [0]
        self._failure: BaseException | None = None
        self._ended = False
        # A daemon thread: a process that ends without `load` or `abandon` drops the load.
        self._thread = threading.Thread(target=self._send, name="packcache-early-load", daemon=True)
        self._thread.start()

    def _chunks(self) -> Iterator[bytes]:
        for diff_id in self._pull.arrivals(list(self._early)):
            path = f"{diff_id[7:]}/layer.tar"
            yield from layer_member(path, self._early[diff_id])
            self._sent[diff_id] = path
        rest = self._rest.get()
        if rest is None:
            raise _Abandoned("create-builder ended before the builder's config was known")
        yield from rest()

    def _send(self) -> None:
        try:
            self.daemon.load(self._counted(read_ahead(self._chunks())))
        except BaseException as exc:  # raised where the load is ended
            self._failure = exc

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._counter[0] += len(chunk)
            yield chunk

    def load(
        self, config: bytes, plan: list[LoadLayer], tags: list[str]
    ) -> tuple[LoadArchive, int]:
        if self._ended:
            return super().load(config, plan, tags)
        self._ended = True
        self._rest.put(lambda: legacy_archive(config, plan, tags, written=self._sent).chunks)
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        archive = LoadArchive(
            image_id=oci.digest_of(config),
            manifest=None,
            chunks=iter(()),
            content_size=len(config) + sum(item.size for item in plan),
        )
        return archive, self._counter[0]

    @property
    def sending(self) -> bool:
        """Is the load still to be ended?"""
        return not self._ended

    def abandon(self) -> None:
        """End the archive before its manifest, if `load` did not end it."""
        if not self._ended:
            self._ended = True
            self._rest.put(None)
            self._thread.join(ABANDON_WAIT)


def start_early_load(
    store: Store, daemon: Daemon, pull: StreamedPull, base: list[str]
) -> EarlyLoad | None:
    """The load of an image whose layers `pull` downloads, started now where the daemon's
    store takes an archive in any order (a graphdriver) and something downloads; else None.
    `base`: the diffIDs the image starts with."""
    if not pull.pending or not isinstance(planner_for(store, daemon), GraphdriverPlanner):
        return None
    return EarlyLoad(store, daemon, pull, base)
