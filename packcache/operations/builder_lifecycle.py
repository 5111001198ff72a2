"""A lifecycle taken from a lifecycle image, as `pack builder create` takes it.

pack (pkg/client/create_builder.go uriFromLifecycleImage) reads the image's last layer, which
buildpacks/lifecycle's tools/image writes as `/cnb` followed by the release archive's entries
under `/cnb/`, and turns it back into a release archive (the `/cnb/` prefix stripped). That
archive is then what a local lifecycle .tgz is: checked and made into the builder's lifecycle
layer by the same code.

`lifecycle.version` (and no lifecycle at all: pack's default version) is a lifecycle image of
that version: the one pack's config names (`lifecycle-image`) if any, then pack's default
repository, tagged with the version, taken from the cache or reached as the pull policy allows.
"""

from __future__ import annotations

import posixpath
import tarfile
from pathlib import Path

from packcache.errors import PackcacheError
from packcache.store.store import Store

DEFAULT_LIFECYCLE_VERSION = "0.21.0"  # pack's internal/builder/lifecycle.go
DEFAULT_LIFECYCLE_IMAGE = "docker.io/buildpacksio/lifecycle"  # pack's config.go
_CNB = "cnb/"


def lifecycle_images(version: str, configured: str | None) -> list[str]:
    """The lifecycle images that may hold `version`, in the order they are tried."""
    repositories = (
        [configured, DEFAULT_LIFECYCLE_IMAGE] if configured else [DEFAULT_LIFECYCLE_IMAGE]
    )
    return [f"{repository}:{version}" for repository in dict.fromkeys(repositories)]


def write_release_archive(store: Store, diff_id: str, destination: Path, what: str) -> None:
    """The release archive a lifecycle image's layer `diff_id` holds, written (a plain tar) to
    `destination`: entries under /cnb/ with that prefix removed, anything else left out."""
    layer = store.layer(diff_id)
    if layer is None:
        raise PackcacheError(f"{what}: its layer {diff_id} is not in the cache")
    found = 0
    try:
        with (
            layer.uncompressed() as source,
            tarfile.open(fileobj=source, mode="r|") as reader,  # type: ignore[call-overload]
            tarfile.open(destination, mode="w", format=tarfile.PAX_FORMAT) as writer,
        ):
            for member in reader:
                name = posixpath.normpath("/" + member.name).lstrip("/")
                if not name.startswith(_CNB) or ".." in name.split("/"):
                    continue
                member.name = name.removeprefix(_CNB)
                if member.isreg():
                    extracted = reader.extractfile(member)
                    assert extracted is not None
                    writer.addfile(member, extracted)
                elif member.isdir() or member.issym():
                    writer.addfile(member)
                else:
                    continue
                found += 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackcacheError(f"{what}: cannot read its lifecycle layer: {exc}") from exc
    if not found:
        raise PackcacheError(
            f"{what}: its last layer has nothing under /cnb/: not a lifecycle image"
        )
