"""A `docker load` into a graphdriver begun as soon as a pull's manifests are read, before the
image's config is known: create-builder's builder, whose own layers (lifecycle, order, stack,
env) are written while the build image and buildpackages still download.

A graphdriver's loader (moby image/tarexport/load.go) unpacks the whole archive into a temp
directory before it reads manifest.json, so the archive may name its members freely and carry
them in any order: each downloaded layer is sent, named by its diffID, as soon as the cache
staged (verified) it. The daemon registers the layers only after the archive ends, so one
archive would leave all of that work until after the last download. Once the config is known
(`load`), the layers go in the image's order instead, and the archive ends as soon as the next
layer is still downloading, with the manifest of an interim image: the layers so far, on which
the next archive (already streaming meanwhile) builds with placeholders. Each archive's manifest
waits for the load before it, whose layers it names; the last one is the image itself. So the
daemon registers most layers while the rest download.

An interim image is untagged and labelled `io.packcache.interim`; each is removed once the
load after it holds its layers. A command killed meanwhile leaves one behind: a later early
load removes those older than an hour.

A failed download, or an operation that ends before its config (`abandon`), ends the archive
before its manifest: the daemon refuses the load and keeps nothing of it (interim images
already loaded are removed).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import NamedTuple

from packcache.archive.load_writer import LoadLayer, layer_member, legacy_archive
from packcache.errors import PackcacheError
from packcache.image import manifest as oci
from packcache.image.layer import Layer
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

log = logging.getLogger(__name__)

ABANDON_WAIT = 30.0  # seconds a load abandoned is given to end (the daemon drops it)
INTERIM_LABEL = "io.packcache.interim"
# An archive ends, once the load before it is done, with at least this much of the image's
# layers: a smaller load costs the daemon more overhead than it overlaps.
STEP_BYTES = 16 << 20
STALE_INTERIM = 3600.0  # seconds after which an interim image is a killed command's


class _Abandoned(PackcacheError):
    """The operation ended before the image's config was known."""


class _Image(NamedTuple):
    """The image being loaded, once its config is known."""

    config: bytes
    plan: list[LoadLayer]
    tags: list[str]


class _Step:
    """One `docker load` of the series, in a thread of its own."""

    def __init__(self, send: Callable[[_Step], None], wake: Callable[[], None]) -> None:
        self.done = threading.Event()
        self.failure: BaseException | None = None
        self.interim: str | None = None  # the ID of the interim image it loads, if one
        self._send = send
        self._wake = wake  # an archive waiting on downloads checks this load again
        self.thread = threading.Thread(target=self._run, name="packcache-early-load", daemon=True)
        # A daemon thread: a process that ends without `load` or `abandon` drops the load.
        self.thread.start()

    def _run(self) -> None:
        try:
            self._send(self)
        except BaseException as exc:  # raised where the load is ended
            self.failure = exc
        finally:
            self.done.set()
            self._wake()


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
        self._image: _Image | None = None  # None until `load` (and after `abandon`)
        self._known = threading.Event()  # `load` or `abandon` was called
        self._claimed = 0  # the image's layers the manifests written so far register
        self._counter = [0]
        self._ended = False
        self._sweep = threading.Thread(target=self._remove_stale, name="packcache-interim")
        self._sweep.start()
        self._steps: list[_Step] = []
        self._steps.append(_Step(lambda step: self._send(step, None), pull.wake))

    def _send(self, step: _Step, previous: _Step | None) -> None:
        self.daemon.load(self._counted(read_ahead(self._archive(step, previous))))

    def _archive(self, step: _Step, previous: _Step | None) -> Iterator[bytes]:
        """One archive: the layers as they arrive until the image is known (the first only),
        then in the image's order from where the archive before it ended; its manifest."""
        sent: dict[str, str] = {}  # diffID -> the member it was sent as
        if previous is None:
            for diff_id in self._pull.arrivals(list(self._early), until=self._known.is_set):
                yield from self._member(diff_id, self._early[diff_id], sent)
            self._known.wait()
        image = self._image
        if image is None:
            raise _Abandoned("create-builder ended before the builder's config was known")
        start = position = self._claimed
        fresh = 0  # bytes of the image's layers from `start` on the archive carries

        def may_end() -> bool:
            return fresh > 0 and (previous is None or previous.done.is_set())

        while position < len(image.plan):
            item = image.plan[position]
            if item.layer is not None and item.diff_id not in sent:
                # Layers at hand (the builder's own, small) are sent on: they end no archive.
                if getattr(item.layer, "arriving_from", None) is not None:
                    if fresh >= STEP_BYTES and may_end():
                        break
                    if not self._pull.arrived(item.diff_id, until=may_end):
                        break  # the next layer is still downloading: what is here registers
                yield from self._member(item.diff_id, item.layer, sent)
            if item.diff_id in sent:
                fresh += item.size
            position += 1
        yield from self._manifest(step, previous, image, start, position, sent)

    def _member(self, diff_id: str, layer: Layer, sent: dict[str, str]) -> Iterator[bytes]:
        path = f"{diff_id[7:]}/layer.tar"
        yield from layer_member(path, layer)
        sent[diff_id] = path

    def _manifest(
        self,
        step: _Step,
        previous: _Step | None,
        image: _Image,
        start: int,
        end: int,
        sent: dict[str, str],
    ) -> Iterator[bytes]:
        """The end of an archive carrying the image's layers up to `end`: those below `start`
        (and those the daemon held) named as placeholders, so it waits for the load before."""
        if previous is not None:
            previous.done.wait()
            if previous.failure is not None:
                raise _Abandoned("the load before this one failed")
        final = end == len(image.plan)
        config = image.config if final else _interim_config(image.config, image.plan[:end])
        step.interim = None if final else oci.digest_of(config)
        self._claimed = end
        if not final:  # the next archive streams while this one is registered
            self._steps.append(_Step(lambda later: self._send(later, step), self._pull.wake))
        named = [replace(item, layer=None) for item in image.plan[:end]]
        yield from legacy_archive(config, named, image.tags if final else [], written=sent).chunks

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
        self._image = _Image(config, plan, tags)
        self._known.set()
        self._pull.wake()
        self._wait_for_the_image()
        self._sweep.join()  # long done: one list and a removal or two
        archive = LoadArchive(
            image_id=oci.digest_of(config),
            manifest=None,
            chunks=iter(()),
            content_size=len(config) + sum(item.size for item in plan),
        )
        return archive, self._counter[0]

    def _wait_for_the_image(self) -> None:
        """Wait for each load in turn; an interim image is removed once the load after it is
        done. The first failure is raised, the interim images loaded removed."""
        index, interim = 0, None
        while True:
            step = self._steps[index]
            step.done.wait()
            if interim is not None:  # held by the load after it, or needed by none
                self._remove(interim)
            if step.failure is not None:  # the loads after it fail too, registering nothing
                raise step.failure
            if step.interim is None:
                return
            index, interim = index + 1, step.interim

    def _remove(self, image_id: str) -> None:
        try:
            self.daemon.remove_image(image_id)
        except PackcacheError as exc:  # a later early load removes it
            log.warning("an interim image was left in the daemon: %s", exc)

    def _remove_stale(self) -> None:
        """Remove the interim images of commands killed more than STALE_INTERIM ago."""
        try:
            for summary in self.daemon.labelled_images(INTERIM_LABEL):
                created = summary.get("Created")
                if isinstance(created, int) and created < time.time() - STALE_INTERIM:
                    self._remove(str(summary.get("Id")))
        except PackcacheError as exc:
            log.debug("interim images not swept: %s", exc)

    @property
    def sending(self) -> bool:
        """Is the load still to be ended?"""
        return not self._ended

    def abandon(self) -> None:
        """End the archive before its manifest, if `load` did not end it."""
        if not self._ended:
            self._ended = True
            self._known.set()
            self._pull.wake()
            self._steps[0].thread.join(ABANDON_WAIT)


def _interim_config(config: bytes, layers: list[LoadLayer]) -> bytes:
    """The config of an interim image: the image's platform, these layers, the label."""
    image = json.loads(config)
    interim = {
        key: image[key] for key in ("architecture", "os", "variant", "os.version") if key in image
    }
    interim["created"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # A value of its own: two commands' interim images of the same layers are two images.
    interim["config"] = {"Labels": {INTERIM_LABEL: secrets.token_hex(8)}}
    interim["rootfs"] = {"type": "layers", "diff_ids": [item.diff_id for item in layers]}
    return json.dumps(interim, separators=(",", ":")).encode()


def start_early_load(
    store: Store, daemon: Daemon, pull: StreamedPull, base: list[str]
) -> EarlyLoad | None:
    """The load of an image whose layers `pull` downloads, started now where the daemon's
    store takes an archive in any order (a graphdriver) and something downloads; else None.
    `base`: the diffIDs the image starts with."""
    if not pull.pending or not isinstance(planner_for(store, daemon), GraphdriverPlanner):
        return None
    return EarlyLoad(store, daemon, pull, base)
