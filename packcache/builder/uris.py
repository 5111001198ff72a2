"""What a buildpack or lifecycle URI in builder.toml names: an image in the daemon, a local
directory, a local archive or `.cnb` file, or something packcache does not fetch."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from packcache.builder.rules import BuilderError
from packcache.builder.sources import is_oci_layout

IMAGE = "image"
DIRECTORY = "directory"
ARCHIVE = "archive"
BUILDPACKAGE_FILE = "buildpackage-file"  # an OCI layout archive (`pack buildpack package`)
LOCAL_KINDS = (DIRECTORY, ARCHIVE, BUILDPACKAGE_FILE)


class BuildpackSource(NamedTuple):
    """Where one [[buildpacks]] entry's buildpacks come from."""

    uri: str  # as builder.toml wrote it
    kind: str  # IMAGE or one of LOCAL_KINDS
    path: Path | None = None  # for local kinds
    ref: str | None = None  # for IMAGE: the image reference in the daemon


def local_path(uri: str, base: Path) -> Path | None:
    """A file:// URI or a path (relative to builder.toml); None for anything else."""
    if uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        return path if path.is_absolute() else base / path
    if "://" in uri or uri.startswith(("urn:", "docker:")):
        return None
    path = Path(uri) if Path(uri).is_absolute() else base / uri
    return path if path.exists() else None


def _image_ref(uri: str) -> str:
    for prefix in ("docker://", "docker:/"):
        if uri.startswith(prefix):
            return uri.removeprefix(prefix)
    return uri


def daemon_ref(uri: str, base: Path) -> str | None:
    """The image a buildpack URI names in the daemon; None for files, URLs and URNs."""
    if local_path(uri, base) is not None or uri.startswith(
        ("file://", "http://", "https://", "urn:")
    ):
        return None
    return _image_ref(uri)


def classify_buildpack(uri: str, base: Path) -> BuildpackSource:
    """What kind of source a buildpack URI is; one packcache cannot use is a BuilderError."""
    path = local_path(uri, base)
    if path is not None:
        if path.is_dir():
            return BuildpackSource(uri, DIRECTORY, path=path)
        if is_oci_layout(path):
            return BuildpackSource(uri, BUILDPACKAGE_FILE, path=path)
        return BuildpackSource(uri, ARCHIVE, path=path)
    if uri.startswith(("http://", "https://")):
        raise BuilderError(f"buildpack {uri}: packcache does not download; use a local file")
    if uri.startswith("urn:cnb:"):
        raise BuilderError(
            f"buildpack {uri}: buildpack registry and builder URNs are not supported"
        )
    return BuildpackSource(uri, IMAGE, ref=_image_ref(uri))
