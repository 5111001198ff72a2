"""What both ways of making a builder (create_builder from builder.toml, derived_builder from
an existing builder) share before either runs: the registry options, the pull policy check
and the report. Kept apart so a derived builder imports neither the other's phases nor the
publish path it does not take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from packcache.builder.descriptors import BUILDPACK
from packcache.errors import UsageError
from packcache.operations.run_image_fetch import PullPolicy, parse_pull_policy
from packcache.transports.registry import Platform, RegistryOptions

if TYPE_CHECKING:
    from packcache.operations.builder_fetch import PulledImage
    from packcache.operations.builder_modules import Module
    from packcache.operations.builder_publish import BuilderPublishReport
    from packcache.operations.loading import LoadReport

CREATOR = "packcache"


@dataclass
class BuildpackReport:
    id: str
    version: str
    source: str  # the uri as builder.toml wrote it
    kind: str  # image, directory, archive, buildpackage-file
    diff_id: str
    reused: bool  # taken from the cache without reading the source
    module: str = BUILDPACK  # or extension

    @classmethod
    def of(cls, module: Module) -> BuildpackReport:
        d = module.descriptor
        return cls(
            d.id, d.version, module.source, module.kind, module.diff_id, module.reused, d.kind
        )


@dataclass
class CreateBuilderReport:
    name: str
    dry_run: bool
    no_cache: bool
    image_id: str | None  # the daemon's ID for the builder (None in a dry run)
    config_digest: str | None
    diff_ids: list[str]
    buildpacks: list[BuildpackReport]
    imported: list[str]  # buildpackage images read with `docker save`
    layers_written: int  # new builder layers written to the store
    load: LoadReport | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tags: list[str] = field(default_factory=list)  # the other names the builder was given
    pull_policy: str = ""
    pulled: list[PulledImage] = field(default_factory=list)  # images read from registries
    published: BuilderPublishReport | None = None
    # Layers still downloading when the load began: sent as they arrived (builder_fetch).
    layers_streamed: int = 0


def check_pull_policy(pull_policy: str | PullPolicy, publish: bool = False) -> PullPolicy:
    policy = parse_pull_policy(pull_policy)
    if publish and policy is PullPolicy.NEVER:
        # pack refuses it: a publish reads its images from registries.
        raise UsageError("--publish and --pull-policy never cannot be used together")
    return policy


@dataclass(frozen=True)
class Registry:
    """How create-builder reaches registries: pack's options, publish, pack's lifecycle image."""

    options: RegistryOptions = field(default_factory=RegistryOptions)
    publish: bool = False
    lifecycle_image: str | None = None  # pack's config `lifecycle-image`
    # With publish: the platforms to build for (pack's targets); several make an index.
    platforms: tuple[Platform, ...] = ()
