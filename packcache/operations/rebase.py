"""`packcache rebase`: put an app image on a new run image, as the CNB platform spec's
rebaser does (lifecycle phase/rebaser.go), without exporting what the cache already holds.

Reads top to bottom: find the app and run images in the daemon, validate, make sure the app
layers (and, on a containerd store, the run image's blob digests) are known to the cache, build
the new config, load it sending only what the daemon lacks.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.operations.importing import cached_config, import_images
from packcache.operations.loading import held_by_daemon, load_config
from packcache.refs import looks_like_id, normalize
from packcache.store.store import Lease, Store
from packcache.transports.daemon import Daemon

LIFECYCLE_METADATA = "io.buildpacks.lifecycle.metadata"
REBASABLE = "io.buildpacks.rebasable"
STACK_ID = "io.buildpacks.stack.id"
MIXINS = "io.buildpacks.stack.mixins"
DISTRO_NAME = "io.buildpacks.base.distro.name"
DISTRO_VERSION = "io.buildpacks.base.distro.version"
SYNCED_LABEL_PREFIXES = ("io.buildpacks.stack.", "io.buildpacks.base.")
# What the lifecycle writes for created and history when no build time is given.
NORMALIZED_TIME = "1980-01-01T00:00:01Z"


class RebaseError(PackcacheError):
    """The rebase was refused or cannot be done; the image and the cache are untouched."""


@dataclass
class RebaseReport:
    image: str
    tag: str
    old_image_id: str
    new_image_id: str
    run_image: str
    run_image_id: str
    method: str  # cached | no-cache
    dry_run: bool
    app_layers: int
    layers_sent: int = 0
    layers_reused: int = 0
    bytes_sent: int = 0
    saved: list[str] = field(default_factory=list)  # images read with `docker save`
    timings: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round(self.timings.get(phase, 0.0) + now - self.last, 4)
        self.last = now


def _repository(ref: str) -> str:
    """A reference without tag or digest, as lifecycle compares run image names."""
    name = normalize(ref).split("@")[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':')[0]}"


def _metadata(image: str, labels: dict[str, str]) -> dict:
    text = labels.get(LIFECYCLE_METADATA)
    if text is None:
        raise RebaseError(f"{image} is not a CNB image: it has no {LIFECYCLE_METADATA} label")
    try:
        metadata = json.loads(text)
    except ValueError as exc:
        raise RebaseError(
            f"{image}: the {LIFECYCLE_METADATA} label is not valid JSON: {exc}"
        ) from exc
    if not isinstance(metadata, dict) or not isinstance(metadata.get("runImage", {}), dict):
        raise RebaseError(f"{image}: the {LIFECYCLE_METADATA} label is malformed")
    return metadata


def _run_image_names(metadata: dict) -> tuple[str | None, list[str]]:
    """runImage.image and mirrors, else the older stack.runImage ones."""
    run = metadata.get("runImage") or {}
    stack_run = (metadata.get("stack") or {}).get("runImage") or {}
    if run.get("image"):
        return run["image"], list(run.get("mirrors") or [])
    return stack_run.get("image") or None, list(stack_run.get("mirrors") or [])


def _choose_run_image(daemon: Daemon, image: str, metadata: dict, run_image: str | None) -> str:
    if run_image is not None:
        if not daemon.has_image(run_image):
            raise RebaseError(f"run image {run_image} is not in the Docker daemon: pull it first")
        return run_image
    name, mirrors = _run_image_names(metadata)
    if name is None:
        raise RebaseError(f"{image} names no run image in its metadata: pass --run-image")
    for candidate in [name, *mirrors]:  # the image itself, else a mirror the daemon holds
        if daemon.has_image(candidate):
            return candidate
    raise RebaseError(
        f"run image {name} (and its mirrors {', '.join(mirrors) or 'none'}) is not in the "
        "Docker daemon: pull it first"
    )


def _env(info: dict, key: str) -> str:
    for entry in (info.get("Config") or {}).get("Env") or []:
        name, _, value = entry.partition("=")
        if name == key:
            return value
    return ""


def _api_at_least(version: str, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


def _mixins(labels: dict[str, str], image: str) -> set[str]:
    try:
        mixins = json.loads(labels.get(MIXINS) or "[]")
    except ValueError as exc:
        raise RebaseError(f"{image}: the {MIXINS} label is not valid JSON") from exc
    # Stage prefixes ("run:", "build:") do not matter on the run image.
    return {m.split(":", 1)[1] if m.startswith(("run:", "build:")) else m for m in mixins}


def validate(app: dict, run: dict, image: str, run_ref: str, metadata: dict) -> None:
    """The platform spec's checks; each refusal names the mismatch."""
    app_labels = (app.get("Config") or {}).get("Labels") or {}
    run_labels = (run.get("Config") or {}).get("Labels") or {}
    if app_labels.get(REBASABLE) == "false":
        raise RebaseError(f"{image} is not marked as rebasable ({REBASABLE}=false); use --force")
    if _api_at_least(_env(app, "CNB_PLATFORM_API"), (0, 12)):
        for what, app_value, run_value, wildcard in (
            ("os", app.get("Os"), run.get("Os"), False),
            ("architecture", app.get("Architecture"), run.get("Architecture"), False),
            ("variant", app.get("Variant"), run.get("Variant"), True),
            ("distro name", app_labels.get(DISTRO_NAME), run_labels.get(DISTRO_NAME), True),
            (
                "distro version",
                app_labels.get(DISTRO_VERSION),
                run_labels.get(DISTRO_VERSION),
                True,
            ),
        ):
            if wildcard and (not app_value or not run_value):
                continue
            if app_value != run_value:
                raise RebaseError(
                    f"run image {run_ref} has {what} {run_value or '(none)'!r} but {image} "
                    f"needs {app_value or '(none)'!r}; use --force to override"
                )
    else:
        app_stack, run_stack = app_labels.get(STACK_ID), run_labels.get(STACK_ID)
        if not app_stack:
            raise RebaseError(f"{image} defines no stack ({STACK_ID})")
        if not run_stack:
            raise RebaseError(f"run image {run_ref} defines no stack ({STACK_ID})")
        if app_stack != run_stack:
            raise RebaseError(
                f"incompatible stack: run image {run_ref} is {run_stack!r}, {image} is "
                f"{app_stack!r}; use --force to override"
            )
        missing = sorted(_mixins(app_labels, image) - _mixins(run_labels, run_ref))
        if missing:
            raise RebaseError(
                f"run image {run_ref} lacks mixin(s) {', '.join(missing)} that {image} needs"
            )
    name, mirrors = _run_image_names(metadata)
    if _repository(run_ref) not in {_repository(n) for n in [name, *mirrors] if n}:
        raise RebaseError(
            f"run image {run_ref} is not {name or '(none)'} or one of its mirrors "
            f"({', '.join(mirrors) or 'none'}); use --force to use it anyway"
        )


def rebased_config(
    app_config: bytes, run: dict, run_ref: str, metadata: dict, app_layers: list[str], force: bool
) -> bytes:
    """The new image config, as the lifecycle's rebaser makes it (see module docstring)."""
    config = json.loads(app_config)
    run_diff_ids = run["RootFS"]["Layers"]
    metadata = json.loads(json.dumps(metadata))  # a copy to change
    run_meta = metadata.setdefault("runImage", {})
    run_meta["topLayer"] = run_diff_ids[-1]
    # For daemon images the lifecycle records the image ID without its algorithm.
    run_meta["reference"] = run["Id"].removeprefix("sha256:")
    name, mirrors = _run_image_names(metadata)
    if force and _repository(run_ref) not in {_repository(n) for n in [name, *mirrors] if n}:
        run_meta["image"], run_meta["mirrors"] = run_ref, []
        metadata["stack"] = {"runImage": {"image": run_ref, "mirrors": []}}
    container = config.setdefault("config", {})
    labels = {
        key: value
        for key, value in (container.get("Labels") or {}).items()
        if not key.startswith(SYNCED_LABEL_PREFIXES)
    }
    run_labels = (run.get("Config") or {}).get("Labels") or {}
    labels.update({k: v for k, v in run_labels.items() if k.startswith(SYNCED_LABEL_PREFIXES)})
    labels[LIFECYCLE_METADATA] = json.dumps(metadata, separators=(",", ":"))
    container["Labels"] = dict(sorted(labels.items()))
    for key, inspect_key in (
        ("os", "Os"),
        ("architecture", "Architecture"),
        ("variant", "Variant"),
        ("os.version", "OsVersion"),
    ):
        if run.get(inspect_key):
            config[key] = run[inspect_key]
        else:
            config.pop(key, None)
    diff_ids = run_diff_ids + app_layers
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config["created"] = NORMALIZED_TIME
    config["history"] = [{"created": NORMALIZED_TIME} for _ in diff_ids]
    config.pop("container", None)
    return json.dumps(config, separators=(",", ":")).encode()


@contextmanager
def _pack_method_store() -> Iterator[Store]:
    """A throw-away store: --no-cache reads everything from the daemon, as pack does."""
    with tempfile.TemporaryDirectory(prefix="packcache-no-cache-") as tmp:
        yield Store.open(Path(tmp) / "cache")


def rebase(
    store: Store,
    daemon: Daemon,
    image: str,
    *,
    run_image: str | None = None,
    tag: str | None = None,
    force: bool = False,
    no_cache: bool = False,
    dry_run: bool = False,
    lease: Lease | None = None,
) -> RebaseReport:
    if no_cache and dry_run:
        raise UsageError("--no-cache and --dry-run do not go together")
    for name in (image, tag, run_image):
        if name is not None and not looks_like_id(name):
            normalize(name)  # a malformed name is a usage error, found before any work
    timings: dict[str, float] = {}
    clock = _Clock(timings)
    try:
        app = daemon.inspect_image(image)
    except NotFoundError as exc:
        raise RebaseError(f"image {image} is not in the Docker daemon") from exc
    labels = (app.get("Config") or {}).get("Labels") or {}
    metadata = _metadata(image, labels)
    run_ref = _choose_run_image(daemon, image, metadata, run_image)
    run = daemon.inspect_image(run_ref)
    if not force:
        validate(app, run, image, run_ref, metadata)
    top = (metadata.get("runImage") or {}).get("topLayer")
    app_diff_ids = (app.get("RootFS") or {}).get("Layers") or []
    if not top or top not in app_diff_ids:
        raise RebaseError(
            f"{image}: the run image top layer {top or '(none)'} named in its metadata is not "
            "one of its layers"
        )
    app_layers = app_diff_ids[len(app_diff_ids) - app_diff_ids[::-1].index(top) :]
    if not run["RootFS"].get("Layers"):
        raise RebaseError(f"run image {run_ref} has no layers")
    clock.lap("inspect")
    report = RebaseReport(
        image=image,
        tag=tag or image,
        old_image_id=app["Id"],
        new_image_id="",
        run_image=run_ref,
        run_image_id=run["Id"],
        method="no-cache" if no_cache else "cached",
        dry_run=dry_run,
        app_layers=len(app_layers),
        timings=timings,
    )
    with _pack_method_store() if no_cache else nullcontext(store) as source:
        # The app's config and layers: from the cache, or one `docker save` of the app image.
        app_config_digest = None if no_cache else cached_config(source, app, app_layers, lease)
        if app_config_digest is None:
            if dry_run:
                report.saved.append(image)  # what a real run would save
            else:
                import_images(source, daemon, [image], lease=None if no_cache else lease)
                report.saved.append(image)
                app_config_digest = source.resolve_image(app["Id"])
        if daemon.info.containerd_store and (
            no_cache  # pack sends the run image's layers too, so it reads them first
            or None in held_by_daemon(source, daemon, run["RootFS"]["Layers"])
        ):
            # Referencing run image blobs needs their digests as this content store has
            # them: one save of the run image teaches them to the cache.
            if not dry_run:
                import_images(source, daemon, [run_ref], lease=None if no_cache else lease)
            report.saved.append(run_ref)
        clock.lap("save+import")
        if dry_run:
            # What a real run would send: every layer the daemon does not hold already.
            diff_ids = run["RootFS"]["Layers"] + app_layers
            held = held_by_daemon(source, daemon, diff_ids)
            report.layers_reused = sum(reference is not None for reference in held)
            report.layers_sent = len(diff_ids) - report.layers_reused
            clock.lap("plan")
            return report
        new_config = rebased_config(
            source.image_config(app_config_digest), run, run_ref, metadata, app_layers, force
        )
        clock.lap("config")
        loaded = load_config(
            source,
            daemon,
            new_config,
            [report.tag],
            lease=None if no_cache else lease,
            # pack sends every layer to a containerd store, placeholders to a graphdriver.
            reuse=not (no_cache and daemon.info.containerd_store),
        )
        clock.lap("load")
    report.new_image_id = loaded.image_id
    report.layers_sent = loaded.layers_sent
    report.layers_reused = loaded.layers_reused
    report.bytes_sent = loaded.bytes_sent
    return report
