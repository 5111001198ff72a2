"""The Cloud Native Buildpacks image model: label names, the lifecycle's metadata label, run
image references and their mirrors, and the time the lifecycle and pack normalize to.

Label names follow the platform spec and pack (platform/*.md, pkg/dist, internal/builder).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from packcache.errors import PackcacheError
from packcache.refs import normalize

BUILDER_METADATA = "io.buildpacks.builder.metadata"
BUILDPACK_LAYERS = "io.buildpacks.buildpack.layers"
BUILDPACK_ORDER = "io.buildpacks.buildpack.order"
ORDER_EXTENSIONS = "io.buildpacks.buildpack.order-extensions"
EXTENSION_LAYERS = "io.buildpacks.extension.layers"
BUILDPACKAGE_METADATA = "io.buildpacks.buildpackage.metadata"
LIFECYCLE_METADATA = "io.buildpacks.lifecycle.metadata"
REBASABLE = "io.buildpacks.rebasable"
STACK_ID = "io.buildpacks.stack.id"
STACK_MIXINS = "io.buildpacks.stack.mixins"
DISTRO_NAME = "io.buildpacks.base.distro.name"
DISTRO_VERSION = "io.buildpacks.base.distro.version"
# Labels a rebase takes from the new run image instead of keeping the app's.
RUN_IMAGE_LABEL_PREFIXES = ("io.buildpacks.stack.", "io.buildpacks.base.")

# imgutil's NormalizedDateTime: what the lifecycle and pack write for created, history entries
# and file times when no build time is given, so the same inputs give the same image.
NORMALIZED_TIME = "1980-01-01T00:00:01Z"
NORMALIZED_EPOCH = 315532801  # NORMALIZED_TIME in seconds since 1970


class MetadataError(PackcacheError):
    """A CNB label is missing or malformed."""


def repository(ref: str) -> str:
    """A reference without tag or digest, as the lifecycle compares run image names."""
    name = normalize(ref).split("@")[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':')[0]}"


class RunImageReference(NamedTuple):
    """The run image an app image was built on, by name, and the mirrors of that name."""

    image: str | None
    mirrors: tuple[str, ...] = ()

    def names(self) -> list[str]:
        """The image first, then its mirrors."""
        return [name for name in [self.image, *self.mirrors] if name]

    def matches(self, ref: str) -> bool:
        """Is `ref` this run image or one of its mirrors (any tag or digest)?"""
        return repository(ref) in {repository(name) for name in self.names()}


def stack_mixins(labels: Mapping[str, str], image: str) -> set[str]:
    """The mixins an image declares, without the stage prefixes ("run:", "build:")."""
    try:
        mixins = json.loads(labels.get(STACK_MIXINS) or "[]")
    except ValueError as exc:
        raise MetadataError(f"{image}: the {STACK_MIXINS} label is not valid JSON") from exc
    return {m.split(":", 1)[1] if m.startswith(("run:", "build:")) else m for m in mixins}


class LifecycleMetadata(NamedTuple):
    """The io.buildpacks.lifecycle.metadata label of an app image."""

    document: Mapping[str, Any]  # the whole label: a rebase rewrites parts and keeps the rest

    @classmethod
    def from_labels(cls, image: str, labels: Mapping[str, str]) -> LifecycleMetadata:
        text = labels.get(LIFECYCLE_METADATA)
        if text is None:
            raise MetadataError(f"{image} is not a CNB image: it has no {LIFECYCLE_METADATA} label")
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise MetadataError(
                f"{image}: the {LIFECYCLE_METADATA} label is not valid JSON: {exc}"
            ) from exc
        if not isinstance(document, dict) or not isinstance(document.get("runImage", {}), dict):
            raise MetadataError(f"{image}: the {LIFECYCLE_METADATA} label is malformed")
        return cls(document)

    @property
    def run_image(self) -> RunImageReference:
        """runImage.image and mirrors, else the older stack.runImage ones."""
        run = self.document.get("runImage") or {}
        stack_run = (self.document.get("stack") or {}).get("runImage") or {}
        if run.get("image"):
            return RunImageReference(run["image"], tuple(run.get("mirrors") or []))
        return RunImageReference(
            stack_run.get("image") or None, tuple(stack_run.get("mirrors") or [])
        )

    @property
    def top_layer(self) -> str | None:
        """The diffID of the run image's top layer in the app image."""
        return (self.document.get("runImage") or {}).get("topLayer") or None

    def rebased(self, top_layer: str, reference: str, renamed_to: str | None = None) -> str:
        """The label after a rebase onto the run image whose top layer and reference are given;
        `renamed_to` names that run image when it is not the recorded one or a mirror."""
        document = copy.deepcopy(dict(self.document))
        run = document.setdefault("runImage", {})
        run["topLayer"] = top_layer
        run["reference"] = reference
        if renamed_to is not None:
            run["image"], run["mirrors"] = renamed_to, []
            document["stack"] = {"runImage": {"image": renamed_to, "mirrors": []}}
        return json.dumps(document, separators=(",", ":"))
