"""The `packcache` command line: parses, calls the library, prints. No logic lives here.

Exit codes: 0 ok, 1 the operation failed, 2 the command was used wrongly (see README).
"""

# No `from __future__ import annotations`: typer reads every command's annotations on each
# start, and annotations kept as strings would be compiled and evaluated there every time.
import atexit
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple, NoReturn

import typer

from packcache import render
from packcache.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PackcacheError,
    UsageError,
)
from packcache.progress import NO_PROGRESS, Progress
from packcache.refs import short_id
from packcache.units import DURATION_HELP, SIZE_HELP, parse_duration, parse_size

if TYPE_CHECKING:
    from concurrent.futures import Future

    from packcache.operations.derived_builder import DerivedBuilderRequest
    from packcache.operations.importing import DaemonImportReport
    from packcache.operations.rebase_publish import PublishReport
    from packcache.store.store import EvictedLayer, Lease, Store
    from packcache.template import Template
    from packcache.transports.daemon import Daemon

# Help strings are rich markup: a [word] in one is taken for a style and vanishes, so defaults
# go in show_default= (tests/test_cli_help.py checks every help text is printed whole).
app = typer.Typer(
    name="packcache",
    help="A host layer cache for Cloud Native Buildpacks images on the Docker daemon.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


class Format(StrEnum):
    table = "table"
    json = "json"


class LsSort(StrEnum):
    size = "size"
    last_used = "last-used"
    created = "created"


# A Format or a Template: `parser` makes the value, and typed as an Enum, typer would turn every
# value but the Enum's into None.
FormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        parser=lambda text: _format_value(text),
        metavar="FORMAT",
        help="table for people, json for programs, or a template as docker takes: "
        "'{{.DiffID}} {{.Size}}', 'table {{.DiffID}}\\t{{.Size}}' (fields: the JSON keys).",
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress display on the terminal.")
]
NoTruncOption = Annotated[
    bool, typer.Option("--no-trunc", help="Full IDs and every image name in tables.")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Check and plan only; change nothing.")
]
ReportOption = Annotated[
    Path | None, typer.Option("--report", help="Also write the result as JSON to FILE.")
]


# Each command's --help ends with these, as pack's and docker's do. Help is rich markup: no
# [brackets] (see above).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "ls": (
        "packcache ls --image my-app:latest",
        "packcache ls --sort size --no-trunc",
        "packcache ls --format 'table {{.DiffID}}\\t{{.Size}}\\t{{join .Images \", \"}}'",
    ),
    "du": ("packcache du", "packcache du --format '{{.Refs}} {{.UniqueSize}}'"),
    "prune": (
        "packcache prune --max-size 20G",
        "packcache prune --older-than 30d --dry-run",
        "packcache prune --image my-app:old",
    ),
    "rm": ("packcache rm my-app:old", "packcache rm --layer 3f2a9c1b7d4e"),
    "verify": ("packcache verify", "packcache verify --repair"),
    "import": (
        "packcache import paketobuildpacks/run-jammy-base:latest my-app:latest",
        "docker save my-app:latest | packcache import --archive -",
    ),
    "load": ("packcache load my-app:latest", "packcache load 3f2a9c1b7d4e --tag my-app:restored"),
    "pull": (
        "packcache pull paketobuildpacks/run-jammy-base:latest",
        "packcache pull --insecure-registry localhost:5000 localhost:5000/my-app:1",
    ),
    "rebase": (
        "packcache rebase my-app:latest",
        "packcache rebase my-app:latest --run-image paketobuildpacks/run-jammy-base:0.1.100",
        "packcache rebase my-app:latest --dry-run --format json",
    ),
    "push": (
        "packcache push my-app:latest registry.example.com/team/my-app:1",
        "packcache push --insecure-registry localhost:5000 my-app:latest localhost:5000/my-app:1",
    ),
    "info": ("packcache info", "packcache info --format '{{.CacheDir}} {{.Size}}'"),
    "create-builder": (
        "packcache create-builder my-builder:jammy --config builder.toml",
        "packcache create-builder registry.example.com/my-builder:jammy -c builder.toml --publish",
        "packcache create-builder my-builder:node --from-builder my-builder:jammy "
        "--buildpack from=builder --buildpack ./my-buildpack --env BP_LOG_LEVEL=debug",
    ),
}


def examples(command: str) -> str:
    """The Examples paragraph of `command`'s help (paragraphs: typer joins single lines)."""
    return "Examples:\n\n" + "\n\n".join(f"$ {line}" for line in EXAMPLES[command])


def complete_images(ctx: typer.Context, incomplete: str) -> list[str]:
    """Image names from the cache's index for the shell to complete: read-only, and nothing
    (never an error on the user's terminal) when there is no cache or it cannot be read."""
    import contextlib
    import io

    try:
        root = ctx.find_root().params.get("cache_dir") or os.environ.get("PACKCACHE_DIR")
        cache = expand_home(root, "--cache-dir") if root else default_cache_dir()
        if not (cache / "index.db").is_file():  # a read-only open would create the cache
            return []
        from packcache.store.scan import image_names
        from packcache.store.store import Store

        with contextlib.redirect_stderr(io.StringIO()):  # warnings about the cache dir's mode
            store = Store.open(cache, writable=False)
        try:
            names = image_names(store)
        finally:
            store.close()
        return [name for name in names if name.startswith(incomplete)]
    except Exception:  # a shell's completion must never fail
        return []


def _format_value(text: str) -> "Format | Template":
    """--format: the table, JSON, or a template checked before the command runs."""
    if isinstance(text, Format):  # the default
        return text
    with suppress(ValueError):  # table or json: the template parser is not even imported
        return Format(text)
    from packcache.template import parse_format

    try:
        chosen = parse_format(text)
    except UsageError as exc:
        message = str(exc).removeprefix("--format: ").removeprefix("--format ")
        raise typer.BadParameter(message) from None
    return Format(chosen) if isinstance(chosen, str) else chosen


def print_formatted(fmt: "Format | Template", json_text: str, rows_key: str | None = None) -> None:
    """Output of --format json (the JSON as it is) or a template: one line per row of the
    JSON (its list, or its `rows_key` list), or one for the whole object."""
    if fmt is Format.json:
        emit(json_text)
        return
    import json

    data = json.loads(json_text)
    rows = data[rows_key] if rows_key else data if isinstance(data, list) else [data]
    with reported():
        text = fmt.render(rows)
    if text:
        emit(text)


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = expand_home(xdg, "XDG_CACHE_HOME") if xdg else None
    if base is None or not base.is_absolute():  # the XDG spec: a relative path is ignored
        base = expand_home("~/.cache", "the default cache dir")
    return base / "packcache"


def expand_home(text: str, source: str) -> Path:
    """`text` with a leading ~ or ~user expanded as a shell would, which it does not do inside
    quotes or in a config file."""
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):
        user = expanded.split("/", 1)[0]
        raise UsageError(f"{source} {text!r}: cannot expand {user} (no such user or no $HOME)")
    return Path(expanded)


class Writing(NamedTuple):
    store: "Store"
    lease: "Lease"
    shown: Progress


@dataclass
class Context:
    cache_dir: Path
    verbose: int
    host: str | None
    cache_dir_source: str = "--cache-dir"  # where cache_dir came from, to name in errors
    # Where the daemon's containerd is, where its info does not say.
    containerd_address: str | None = None
    containerd_namespace: str | None = None
    # The daemon being connected to (its info asked) by `connect_daemon_soon`.
    connecting: "Future[Daemon] | None" = None

    def checked_cache_dir(self) -> Path:
        """The cache dir, refused with a usage error if it exists and is not a directory."""
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            kind = ": it is a file" if self.cache_dir.is_file() else ""
            raise UsageError(
                f"the cache dir {self.cache_dir} ({self.cache_dir_source}) is not a directory{kind}"
            )
        return self.cache_dir

    def daemon(self, progress: Progress = NO_PROGRESS) -> "Daemon":
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            daemon = connecting.result()  # its error, if any, raised here as if asked now
            daemon.progress = progress
            return daemon
        return self._new_daemon(progress)

    def _new_daemon(self, progress: Progress) -> "Daemon":
        from packcache.transports.containerd import ENV_ADDRESS, ENV_NAMESPACE
        from packcache.transports.daemon import Daemon

        # Keyed as the transport reads them from the environment (here already read by typer).
        given = {ENV_ADDRESS: self.containerd_address, ENV_NAMESPACE: self.containerd_namespace}
        settings = {key: value for key, value in given.items() if value}
        return Daemon(self.host, progress=progress, containerd_settings=settings)

    def connect_daemon_soon(self) -> None:
        """Ask the daemon for its info (a command's first round trip) in a thread while the
        command imports its operation: the daemon answers while the interpreter works.
        `daemon()` then takes the connection, or raises what connecting raised."""
        from concurrent.futures import Future

        # Imported here, not in the thread while this one imports the command's operation.
        from packcache.transports import containerd, daemon  # noqa: F401

        connecting: Future[Daemon] = Future()

        def connect() -> None:
            try:
                connecting.set_result(self._new_daemon(NO_PROGRESS))
            except BaseException as exc:  # raised where the daemon is asked for
                connecting.set_exception(exc)

        # A daemon thread: a command that fails before it needs the daemon does not wait.
        threading.Thread(target=connect, name="daemon-connect", daemon=True).start()
        self.connecting = connecting

    def open_store(self, writable: bool = True):
        from packcache.store.store import Store  # imported late: `--help` stays instant

        return Store.open(self.checked_cache_dir(), writable=writable)

    def open_index(self):
        """The cache read-only, for read-only commands: no SQLAlchemy import (see database.py)."""
        return self.open_store(writable=False)

    @contextmanager
    def writing(
        self, command: str, quiet: bool = True, fmt: "Format | Template" = Format.table
    ) -> Iterator[Writing]:
        """What a command that adds to the cache runs in: the store, held by a lease named after
        the command, its progress display, and the size cap (read before, enforced after)."""
        from packcache.operations.housekeeping import size_capped

        store = self.open_store()
        with (
            size_capped(store),
            store.lease(command) as lease,
            progress_display(quiet, fmt) as shown,
        ):
            yield Writing(store, lease, shown)


def emit(text: str) -> None:
    """Print a command's data. Not typer.echo: it scans the whole text for ANSI codes to strip
    when stdout is not a terminal, which costs more than building a large `ls` table."""
    sys.stdout.write(text)
    sys.stdout.write("\n")


@contextmanager
def reported() -> Iterator[None]:
    """Turn library errors into one message on stderr and the documented exit code."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("packcache: interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        shown = shown_error(exc)
        if shown is None:
            raise  # a bug: main() shows it in one line, the runner of the tests in full
        message, code = shown
        typer.echo(f"packcache: error: {message}", err=True)
        raise typer.Exit(code) from exc


def shown_error(exc: BaseException) -> tuple[str, int] | None:
    """The message and exit code an expected error is shown with; None for a bug."""
    if isinstance(exc, PackcacheError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):  # the filesystem under the cache or an archive: disk full, I/O
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", EXIT_FAILED
    cause = _sqlite_error(exc)
    if cause is not None:
        return f"the cache index failed: {cause}", EXIT_FAILED
    return None


def _sqlite_error(exc: BaseException) -> BaseException | None:
    """The sqlite3 error `exc` is, or wraps (SQLAlchemy keeps it as .orig; read-only commands
    never import SQLAlchemy, so its exception classes are not named here)."""
    import sqlite3

    for error in (exc, getattr(exc, "orig", None)):
        if isinstance(error, sqlite3.Error):
            return error
    return None


def show_version(value: bool) -> None:
    if value:
        typer.echo(render.version_text())
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    cache_dir: Annotated[
        str | None,
        typer.Option(
            "--cache-dir",
            envvar="PACKCACHE_DIR",
            help="Cache directory.",
            show_default="$XDG_CACHE_HOME/packcache or ~/.cache/packcache",
        ),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr (-vv: debug).")
    ] = 0,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            "-H",
            envvar="DOCKER_HOST",
            help="Docker daemon socket.",
            show_default="unix:///var/run/docker.sock",
        ),
    ] = None,
    containerd_address: Annotated[
        str | None,
        typer.Option(
            "--containerd-address",
            envvar="PACKCACHE_CONTAINERD_ADDRESS",
            help="The daemon's containerd socket, where the daemon does not say (API before "
            "1.46); off: always load with docker load.",
            show_default="/run/containerd/containerd.sock or "
            "/var/run/docker/containerd/containerd.sock",
        ),
    ] = None,
    containerd_namespace: Annotated[
        str | None,
        typer.Option(
            "--containerd-namespace",
            envvar="PACKCACHE_CONTAINERD_NAMESPACE",
            help="The daemon's containerd namespace, where the daemon does not say.",
            show_default="moby",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=show_version,
            is_eager=True,
            help="Print the version, Python's, and the engines it was tested with.",
        ),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        format="packcache: %(message)s",
        stream=sys.stderr,
    )
    if cache_dir is not None and not cache_dir.strip():  # not the current directory
        typer.echo("packcache: error: --cache-dir is empty", err=True)
        raise typer.Exit(EXIT_USAGE)
    source = "--cache-dir"
    if getattr(ctx.get_parameter_source("cache_dir"), "name", None) == "ENVIRONMENT":
        source = "PACKCACHE_DIR"
    with reported():
        path = expand_home(cache_dir, source) if cache_dir else default_cache_dir()
    ctx.obj = Context(
        cache_dir=path,
        verbose=verbose,
        host=host,
        cache_dir_source=source if cache_dir else "the default",
        containerd_address=containerd_address,
        containerd_namespace=containerd_namespace,
    )


@app.command("ls", epilog=examples("ls"))
def ls_command(
    ctx: typer.Context,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="Only this image's layers (tag or image ID).",
            autocompletion=complete_images,
        ),
    ] = None,
    sort: Annotated[LsSort, typer.Option("--sort", help="Order of the rows.")] = LsSort.last_used,
    no_trunc: NoTruncOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """List cached layers: diffID, compressed digests, size, the images using it, last use."""
    from packcache.store.scan import list_layers

    with reported():
        layers = list_layers(ctx.obj.open_index(), image=image, sort=sort.value)
    if fmt is not Format.table:
        print_formatted(fmt, render.layers_json(layers))
        return
    emit(render.layers_table(layers, no_trunc=no_trunc))


@app.command("du", epilog=examples("du"))
def du_command(
    ctx: typer.Context, no_trunc: NoTruncOption = False, fmt: FormatOption = Format.table
) -> None:
    """Disk usage: totals, and per image its size, shared size and unique size."""
    from packcache.store.scan import disk_usage

    with reported():
        usage = disk_usage(ctx.obj.open_index())
    if fmt is not Format.table:
        print_formatted(fmt, render.disk_usage_json(usage), rows_key="images")
        return
    typer.echo(
        f"{usage.layers} layers, {render.size(usage.size)} on disk "
        f"({render.size(usage.uncompressed_size)} uncompressed)"
    )
    if usage.partial_files:
        partial = render.size(usage.partial_size)
        typer.echo(f"{usage.partial_files} partial files in ingest/ ({partial})")
    if usage.images:
        typer.echo("")
        typer.echo(render.images_table(usage.images, no_trunc=no_trunc))


def _print_evicted(removed: "list[EvictedLayer]", reclaimed: int, dry_run: bool) -> None:
    verb = "Would remove" if dry_run else "Removed"
    for layer in removed:
        typer.echo(f"{verb} {layer.diff_id}  {render.size(layer.blob_size)}")
    typer.echo(
        f"{'Would reclaim' if dry_run else 'Reclaimed'} {render.size(reclaimed)} "
        f"({render.count(len(removed), 'layer')})"
    )


@app.command("prune", epilog=f"{SIZE_HELP}\n\n{DURATION_HELP}\n\n{examples('prune')}")
def prune_command(
    ctx: typer.Context,
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max-size",
            metavar="SIZE",
            help="Evict least recently used layers until the cache is at or under SIZE.",
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than", metavar="DURATION", help="Evict layers not used for DURATION."
        ),
    ] = None,
    image: Annotated[
        str | None, typer.Option("--image", help="Only this image's layers (alone: all of them).")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Evict every layer.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would go; change nothing.")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Evict layers by size cap (LRU), age, image or all; layers in use are never removed."""
    from packcache.store.prune import prune

    with reported():
        limit = parse_size(max_size) if max_size is not None else None
        age = parse_duration(older_than) if older_than is not None else None
        result = prune(
            ctx.obj.open_store(),
            max_size=limit,
            older_than=age,
            image=image,
            everything=everything,
            dry_run=dry_run,
        )
    if fmt is not Format.table:
        print_formatted(fmt, render.prune_json(result))
        return
    _print_evicted(result.removed, result.reclaimed, dry_run)
    if result.in_use:
        typer.echo(f"Kept {len(result.in_use)} layers in use by a running operation")


@app.command("rm", epilog=examples("rm"))
def rm_command(
    ctx: typer.Context,
    images: Annotated[
        list[str] | None,
        typer.Argument(help="Images (tag or ID) to forget.", autocompletion=complete_images),
    ] = None,
    layers: Annotated[
        list[str] | None, typer.Option("--layer", help="A layer (diffID or digest, short or full).")
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Remove images (and the layers only they use) or single layers from the cache."""
    from packcache.operations.housekeeping import remove

    if not images and not layers:
        typer.echo("packcache: error: name an image or --layer to remove", err=True)
        raise typer.Exit(EXIT_USAGE)
    with reported():
        report = remove(ctx.obj.open_store(), images or [], layers or [])
    if fmt is not Format.table:
        print_formatted(fmt, render.remove_json(report))
        return
    _print_evicted(report.removed, report.reclaimed, report.dry_run)


@app.command("verify", epilog=examples("verify"))
def verify_command(
    ctx: typer.Context,
    repair: Annotated[
        bool, typer.Option("--repair", help="Evict bad layers and remove stray files.")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Re-hash every blob; report missing, corrupt, orphan and stale temp files."""
    from packcache.store.verify import verify

    with reported():
        report = verify(ctx.obj.open_store(writable=repair), repair=repair)
    if fmt is not Format.table:
        print_formatted(fmt, render.verify_json(report))
    else:
        typer.echo(f"Checked {report.checked} blobs")
        for label, items in (
            ("missing blob for layer", report.missing),
            ("corrupt blob for layer", report.corrupt),
            ("orphan file", report.orphans),
            ("stale ingest file", report.stale_ingest),
            ("unreadable blob for layer", report.unreadable),
            ("could not remove", report.unremoved),
        ):
            for item in items:
                typer.echo(f"{label}: {item}")
        if report.ok:
            typer.echo("OK")
        elif report.repaired:
            typer.echo("Repaired")
    if not report.ok and not report.repaired:
        raise typer.Exit(EXIT_FAILED)


@app.command("import", epilog=examples("import"))
def import_command(
    ctx: typer.Context,
    images: Annotated[
        list[str] | None, typer.Argument(help="Images in the Docker daemon (tag or ID).")
    ] = None,
    archive: Annotated[
        str | None,
        typer.Option(
            "--archive", metavar="FILE", help="Read a `docker save` archive ('-': stdin)."
        ),
    ] = None,
    launch_cache: Annotated[
        bool,
        typer.Option(
            "--launch-cache",
            help="Read pack's launch caches instead: the volume or directory named (one), "
            "else every launch cache volume of the daemon.",
        ),
    ] = False,
    launch_image: Annotated[
        str | None,
        typer.Option("--image", help="With --launch-cache: only this daemon image's layers."),
    ] = None,
    no_launch_cache: Annotated[
        bool,
        typer.Option("--no-launch-cache", help="Save images without looking in launch caches."),
    ] = False,
    quiet: QuietOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Add images to the cache: new layers only, from one `docker save` read once."""
    from packcache.archive.save_reader import import_archive
    from packcache.operations.importing import DaemonImportReport, import_images
    from packcache.operations.launch_layers import LaunchChoice

    if launch_cache or launch_image:
        _import_launch_cache(ctx, images or [], archive, launch_cache, launch_image, fmt)
        return
    if bool(images) == bool(archive):
        typer.echo("packcache: error: name images in the daemon, or --archive FILE", err=True)
        raise typer.Exit(EXIT_USAGE)
    with reported(), ctx.obj.writing("import", quiet, fmt) as (store, lease, shown):
        if images:
            report = import_images(
                store,
                ctx.obj.daemon(shown),
                images,
                lease=lease,
                launch=LaunchChoice(use=not no_launch_cache),
            )
        else:
            try:
                source = sys.stdin.buffer if archive == "-" else open(archive, "rb")  # noqa: SIM115
            except OSError as exc:
                raise PackcacheError(f"cannot read {archive}: {exc.strerror}") from exc
            with reading(source, archive, shown) as counted_source:
                report = DaemonImportReport(import_archive(store, counted_source, lease=lease))
    _print_import(report, fmt)


def _import_launch_cache(
    ctx: typer.Context,
    sources: list[str],
    archive: str | None,
    launch_cache: bool,
    image: str | None,
    fmt: "Format | Template",
) -> None:
    from packcache.operations.launch_layers import import_launch_cache

    if not launch_cache or archive is not None or len(sources) > 1:
        typer.echo(
            "packcache: error: --launch-cache takes at most one volume or directory "
            "(and --image only goes with it)",
            err=True,
        )
        raise typer.Exit(EXIT_USAGE)
    source = sources[0] if sources else None
    with reported(), ctx.obj.writing("import") as (store, lease, _):
        local_dir = source is not None and "/" in source
        daemon = None if local_dir and image is None else ctx.obj.daemon()
        report = import_launch_cache(store, daemon, source, image=image, lease=lease)
    for problem in report.problems:
        typer.echo(f"packcache: skipped {problem}", err=True)
    for name in report.in_use:
        typer.echo(f"packcache: launch cache {name} is being written by a build", err=True)
    if fmt is not Format.table:
        print_formatted(fmt, render.report_json(report))
        return
    typer.echo(
        f"{render.count(len(report.recorded), 'new layer')} "
        f"({render.size(report.bytes_read)} read) from "
        f"{render.count(len(report.caches), 'launch cache')}, "
        f"{len(report.known)} already cached, {len(report.problems)} skipped"
    )


@contextmanager
def progress_display(quiet: bool, fmt: "Format | Template") -> Iterator[Progress]:
    """The command's one progress display, on stderr while it is a terminal; nothing with
    --quiet, with --format other than table (a program reads the output), or off a terminal."""
    if quiet or fmt is not Format.table or not sys.stderr.isatty():
        yield NO_PROGRESS
        return
    from packcache.display import TerminalProgress

    with TerminalProgress() as shown:
        yield shown


def reading(source, name: str, shown: Progress):
    """An archive being imported, its bytes shown against its size where it has one."""
    from packcache.progress import CountingReader

    try:
        total = os.fstat(source.fileno()).st_size if name != "-" else None
    except (OSError, ValueError):
        total = None
    return CountingReader(source, shown.task(f"Reading {name}", total or None))


def _write_report(report: object, report_file: Path | None, fmt: Format) -> None:
    """The report's JSON to --report FILE and, with --format json, to stdout."""
    text = render.report_json(report)
    if report_file is not None:
        with reported():
            report_file.write_text(text + "\n")
    if fmt is not Format.table:
        print_formatted(fmt, text)


def _print_import(daemon_report: "DaemonImportReport", fmt: Format) -> None:
    report = daemon_report.archive
    if fmt is not Format.table:
        print_formatted(fmt, render.import_json(daemon_report))
        return
    for ref in daemon_report.already_cached:
        typer.echo(f"Already cached: {ref}")
    for ref in daemon_report.from_launch_cache:
        typer.echo(f"Imported {ref} without a save (layers from launch caches)")
    for image in report.images:
        name = ", ".join(image.refs) or short_id(image.config_digest)
        typer.echo(f"Imported {name} ({render.count(len(image.diff_ids), 'layer')})")
    typer.echo(
        f"{render.count(report.layers_written, 'new layer')} "
        f"({render.size(report.bytes_written)} written), "
        f"{report.layers_known} already cached"
    )


# load and rebase: where layers the cache lacks (never imported, or pruned) may come from.
LaunchCacheOption = Annotated[
    str | None,
    typer.Option(
        "--launch-cache",
        metavar="VOLUME|DIR",
        help="Take layers the cache lacks from this launch cache only.",
        show_default="every launch cache volume of the daemon",
    ),
]
NoLaunchCacheOption = Annotated[
    bool, typer.Option("--no-launch-cache", help="Never read pack's launch caches.")
]


@app.command("load", epilog=examples("load"))
def load_command(
    ctx: typer.Context,
    image: Annotated[
        str, typer.Argument(help="A cached image (tag or ID).", autocompletion=complete_images)
    ],
    tags: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="Name it this in the daemon.")
    ] = None,
    launch_cache: LaunchCacheOption = None,
    no_launch_cache: NoLaunchCacheOption = False,
    quiet: QuietOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Put a cached image into the Docker daemon, sending only the layers it lacks."""
    ctx.obj.connect_daemon_soon()
    from packcache.operations.launch_choice import LaunchChoice
    from packcache.operations.loading import load_image

    with reported(), ctx.obj.writing("load", quiet, fmt) as (store, lease, shown):
        daemon = ctx.obj.daemon(shown)
        launch = LaunchChoice(use=not no_launch_cache, source=launch_cache)
        report = load_image(store, daemon, image, tags, lease=lease, launch=launch)
    if fmt is not Format.table:
        print_formatted(fmt, render.report_json(report))
        return
    typer.echo(
        f"Loaded {', '.join(report.tags)} ({short_id(report.image_id)}): "
        f"{render.count(report.layers_sent, 'layer')} sent, "
        f"{report.layers_reused} already in the daemon, "
        f"{render.size(report.bytes_sent)} sent in {report.seconds:.2f} s "
        f"(by {report.load_method})"
    )
    counts = Counter(report.layer_sources.values())
    if set(counts) - {"cache"}:  # some layer was not in the cache: say where it was
        typer.echo("  layers      " + ", ".join(f"{n} from {k}" for k, n in counts.items()))
    for problem in report.launch_cache_problems:
        typer.echo(f"  skipped     {problem}")


InsecureRegistriesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--insecure-registry",
        metavar="HOST",
        help="Reach HOST by plain HTTP or unverified TLS (repeatable).",
    ),
]


@app.command(
    "pull",
    epilog="Credentials and TLS are docker's: the Docker config (docker login) and "
    f"/etc/docker/certs.d/HOST/ca.crt.\n\n{examples('pull')}",
)
def pull_command(
    ctx: typer.Context,
    images: Annotated[list[str], typer.Argument(help="Image references in registries.")],
    platform: Annotated[
        str | None,
        typer.Option(
            "--platform",
            metavar="OS/ARCH[/VARIANT]",
            help="Which image of a multi-platform one (default: linux/amd64).",
        ),
    ] = None,
    insecure_registries: InsecureRegistriesOption = None,
    quiet: QuietOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Add images to the cache straight from their registries: only the layers it lacks."""
    import dataclasses

    from packcache.operations.pulling import pull_images
    from packcache.transports.registry import DEFAULT_PLATFORM, Platform, RegistryOptions

    with reported():
        chosen = Platform.parse(platform) if platform else DEFAULT_PLATFORM
        options = RegistryOptions(insecure=frozenset(insecure_registries or ()))
        with ctx.obj.writing("pull", quiet, fmt) as (store, lease, shown):
            reports = pull_images(
                store, images, lease=lease, options=options, platform=chosen, progress=shown
            )
    if fmt is not Format.table:
        print_formatted(fmt, render.to_json([dataclasses.asdict(report) for report in reports]))
        return
    for report in reports:
        typer.echo(
            f"Pulled {report.ref} ({short_id(report.config_digest)}): "
            f"{render.count(len(report.downloaded), 'layer')} downloaded "
            f"({render.size(report.bytes_downloaded)}), "
            f"{len(report.already_cached)} already cached"
        )


@app.command("rebase", epilog=examples("rebase"))
def rebase_command(
    ctx: typer.Context,
    image: Annotated[
        str,
        typer.Argument(
            help="The app image in the Docker daemon (with --previous-image: the "
            "name the result gets)."
        ),
    ],
    run_image: Annotated[
        str | None,
        typer.Option(
            "--run-image", help="New run image.", show_default="from the image's metadata"
        ),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag",
            help="packcache's own, not with --previous-image (IMAGE --tag NEW is pack's NEW "
            "--previous-image IMAGE). Name the result this.",
            show_default="IMAGE",
        ),
    ] = None,
    previous_image: Annotated[
        str | None,
        typer.Option(
            "--previous-image",
            help="pack's: rebase this image (tag or ID) and name the result IMAGE.",
        ),
    ] = None,
    pull_policy: Annotated[
        str | None,
        typer.Option(
            "--pull-policy",
            metavar="POLICY",
            help="always, if-not-present or never: pull the app and run images through the "
            "cache always, only if the daemon lacks them, or never.",
            show_default="pull-policy in pack's config, else always",
        ),
    ] = None,
    insecure_registries: InsecureRegistriesOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Skip the rebasable, target and run image checks.")
    ] = False,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="pack's method: docker pull, save the whole app image, load it all.",
        ),
    ] = False,
    launch_cache: LaunchCacheOption = None,
    no_launch_cache: NoLaunchCacheOption = False,
    dry_run: DryRunOption = False,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish",
            help="pack's --publish: IMAGE is in a registry and the result is pushed there "
            "(as --tag, if given); only manifests and configs are read, no layer.",
        ),
    ] = False,
    report_file: ReportOption = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report-output-dir",
            metavar="DIR",
            help="Write the lifecycle's report.toml into DIR (tags, and image-id, or with "
            "--publish digest; manifest-size where the result has a manifest).",
        ),
    ] = None,
    quiet: QuietOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Rebase an app image onto a new run image, sending the daemon only what it lacks."""
    if not publish:
        ctx.obj.connect_daemon_soon()
    from packcache.operations.launch_choice import LaunchChoice
    from packcache.operations.pack_config import read_pack_config
    from packcache.operations.rebase import rebase
    from packcache.operations.report_toml import write_report_toml
    from packcache.operations.run_image_fetch import RunImagePull, resolve_pull_policy
    from packcache.transports.registry import RegistryOptions

    if publish:
        if previous_image is not None:  # pack's spelling of IMAGE --tag NEW
            if tag is not None:
                _exit_with("--tag and --previous-image do not go together: use one", EXIT_USAGE)
            image, tag = previous_image, image
        with progress_display(quiet, fmt) as shown:
            published = _rebase_publish(
                image, run_image, tag, force, no_cache, dry_run, insecure_registries, shown
            )
        if report_dir is not None:
            with reported():
                write_report_toml(
                    report_dir,
                    tags=[published.image],
                    digest=published.digest,
                    manifest_size=published.manifest_size,
                )
        _print_publish(published, report_file, fmt)
        return
    started = time.perf_counter()
    with reported():
        config = read_pack_config()
        pull = RunImagePull(
            resolve_pull_policy(pull_policy, config),
            config,
            RegistryOptions(insecure=frozenset(insecure_registries or ())),
        )
        with ctx.obj.writing("rebase", quiet, fmt) as (store, lease, shown):
            daemon = ctx.obj.daemon(shown)
            report = rebase(
                store,
                daemon,
                image,
                run_image=run_image,
                tag=tag,
                previous_image=previous_image,
                force=force,
                no_cache=no_cache,
                dry_run=dry_run,
                lease=lease,
                launch=LaunchChoice(use=not no_launch_cache, source=launch_cache),
                pull=pull,
            )
        if report_dir is not None and not report.dry_run:
            image_id = report.new_image_id.removeprefix("sha256:")
            write_report_toml(
                report_dir, tags=[report.tag], image_id=image_id, manifest_size=report.manifest_size
            )
    report.timings["total"] = round(time.perf_counter() - started, 4)
    _write_report(report, report_file, fmt)
    if fmt is not Format.table:
        return
    verb = "Would rebase" if report.dry_run else "Rebased"
    typer.echo(f"{verb} {report.image} onto {report.run_image} ({short_id(report.run_image_id)})")
    typer.echo(f"  old image   {report.old_image_id}")
    if not report.dry_run:
        typer.echo(f"  new image   {report.new_image_id} as {report.tag}")
    typer.echo(
        f"  layers      {report.layers_sent} sent, {report.layers_reused} reused "
        f"({render.size(report.bytes_sent)} sent)"
    )
    typer.echo(f"  docker save {', '.join(report.saved) or 'none'}")
    if report.layer_sources:
        counts = Counter(report.layer_sources.values())
        typer.echo("  app layers  " + ", ".join(f"{n} from {k}" for k, n in counts.items()))
    for problem in report.launch_cache_problems:
        typer.echo(f"  skipped     {problem}")
    if report.load_method:
        typer.echo(f"  loaded by   {report.load_method}")
    if report.app_image_fetch is not None:
        typer.echo(f"  app image   {render.run_image_fetch(report.app_image_fetch)}")
    if report.run_image_fetch is not None:
        typer.echo(f"  run image   {render.run_image_fetch(report.run_image_fetch)}")
    typer.echo("  time        " + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items()))


def _rebase_publish(
    image: str,
    run_image: str | None,
    tag: str | None,
    force: bool,
    no_cache: bool,
    dry_run: bool,
    insecure_registries: list[str] | None,
    shown: Progress,
) -> "PublishReport":
    from packcache.operations.pack_config import read_pack_config
    from packcache.operations.rebase_publish import rebase_publish
    from packcache.transports.registry import RegistryOptions

    with reported():
        if no_cache or dry_run:
            raise UsageError("--publish does not go with --no-cache or --dry-run")
        options = RegistryOptions(insecure=frozenset(insecure_registries or ()))
        target, previous = (tag, image) if tag else (image, None)
        pack_config = read_pack_config()
        return rebase_publish(
            target,
            options=options,
            previous_image=previous,
            run_image=run_image,
            force=force,
            config_mirrors=pack_config.run_image_mirrors,
            registry_mirrors=pack_config.registry_mirrors,
            progress=shown,
        )


def _print_publish(report: "PublishReport", report_file: Path | None, fmt: Format) -> None:
    _write_report(report, report_file, fmt)
    if fmt is not Format.table:
        return
    typer.echo(f"Rebased {report.previous_image} onto {report.run_image_reference}")
    typer.echo(f"  pushed      {report.image}@{report.digest}")
    typer.echo(
        f"  blobs       {len(report.present)} present, {len(report.mounted)} mounted, "
        f"{len(report.uploaded)} uploaded ({render.size(report.bytes_uploaded)})"
    )
    emit(report.digest)


@app.command(
    "push",
    epilog="Credentials and TLS are docker's: the Docker config (docker login) and "
    f"/etc/docker/certs.d/HOST/ca.crt.\n\n{examples('push')}",
)
def push_command(
    ctx: typer.Context,
    image: Annotated[
        str, typer.Argument(help="A cached image (tag or ID), or a daemon image to import.")
    ],
    ref: Annotated[str, typer.Argument(help="Where to push it: registry/repository:tag.")],
    insecure_registries: InsecureRegistriesOption = None,
    quiet: QuietOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Push an image to a registry: only the blobs it lacks (others mounted or skipped)."""
    from packcache.operations.pushing import push_image
    from packcache.transports.registry import RegistryOptions

    with reported():
        options = RegistryOptions(insecure=frozenset(insecure_registries or ()))
        with ctx.obj.writing("push", quiet, fmt) as (store, lease, shown):
            report = push_image(
                store,
                image,
                ref,
                lease=lease,
                options=options,
                daemon=lambda: ctx.obj.daemon(shown),
                progress=shown,
            )
    if fmt is not Format.table:
        print_formatted(fmt, render.report_json(report))
        return
    typer.echo(
        f"Pushed {report.image} as {report.ref}: {len(report.uploaded)} blobs uploaded "
        f"({render.size(report.bytes_uploaded)}), {len(report.mounted)} mounted, "
        f"{len(report.present)} already there"
    )
    emit(report.digest)


@app.command("info", epilog=examples("info"))
def info_command(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """Cache directory, size, schema revision, counts and settings."""
    from packcache.store.info import cache_info

    with reported():
        info = cache_info(ctx.obj.open_store(writable=False))
    info["launch_caches"] = _launch_caches_found(ctx)
    if fmt is not Format.table:
        print_formatted(fmt, render.to_json(info))
        return
    for key, value in info.items():
        shown = render.size(value) if key.endswith("size") and isinstance(value, int) else value
        if key == "launch_caches" and value is not None:
            shown = ", ".join(value) or "none"
        typer.echo(f"{key.replace('_', ' ')}: {'-' if shown is None else shown}")


def _launch_caches_found(ctx: typer.Context) -> list[str] | None:
    """pack's launch cache volumes in the daemon; None where the daemon cannot be asked."""
    from packcache.transports.launch_cache import find_volumes

    try:
        return [cache.name for cache in find_volumes(ctx.obj.daemon())]
    except PackcacheError as exc:
        logging.getLogger(__name__).info("no launch caches listed: %s", exc)
        return None


@app.command("create-builder", epilog=examples("create-builder"))
def create_builder_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name (tag) of the builder image to create.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="builder.toml, as pack reads it.")
    ] = None,
    from_builder: Annotated[
        str | None,
        typer.Option(
            "--from-builder",
            help="Derive from this builder what `pack build` would make ephemerally (no save).",
        ),
    ] = None,
    buildpacks: Annotated[
        list[str] | None,
        typer.Option(
            "--buildpack",
            "-b",
            metavar="URI",
            help="With --from-builder: as pack build's --buildpack (sets the order's group).",
        ),
    ] = None,
    extensions: Annotated[
        list[str] | None,
        typer.Option(
            "--extension",
            metavar="URI",
            help="With --from-builder: as pack build's --extension (sets the extension order).",
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", "-e", metavar="NAME=VALUE", help="With --from-builder: a /platform/env file."
        ),
    ] = None,
    order: Annotated[
        list[str] | None,
        typer.Option(
            "--order",
            metavar="ID[@VERSION][?],...",
            help="With --from-builder: one group of the new order (? for optional).",
        ),
    ] = None,
    run_image: Annotated[
        str | None, typer.Option("--run-image", help="With --from-builder: the run image.")
    ] = None,
    pull_policy: Annotated[
        str | None,
        typer.Option(
            "--pull-policy",
            help="always, if-not-present or never: how the build image, buildpackages and a "
            "lifecycle image are fetched (from registries, into the cache). Default: pack's "
            "config pull-policy, else always.",
        ),
    ] = None,
    labels: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", metavar="KEY=VALUE", help="Add a label to the builder."),
    ] = None,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish", help="Push the builder to the registry NAME names, not the daemon."
        ),
    ] = False,
    insecure_registries: InsecureRegistriesOption = None,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache", help="pack's method: save each buildpackage, re-tar, load; cache unused."
        ),
    ] = False,
    tags: Annotated[
        list[str] | None,
        typer.Option("--tag", metavar="IMAGE:TAG", help="Another name for the builder."),
    ] = None,
    flatten: Annotated[
        list[str] | None,
        typer.Option("--flatten", metavar="ID@V,...", help="Buildpacks to put in one layer."),
    ] = None,
    targets: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            metavar="OS/ARCH",
            help="The daemon's platform; with --publish, several make an index.",
        ),
    ] = None,
    append_image_name_suffix: Annotated[
        bool,
        typer.Option(
            "--append-image-name-suffix",
            help="With --publish and several targets: each platform's builder is also pushed "
            "under NAME's tag with -OS-ARCH appended (pack's naming).",
        ),
    ] = False,
    dry_run: DryRunOption = False,
    report_file: ReportOption = None,
    quiet: QuietOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Create a builder image from builder.toml, taking buildpack layers from the cache; or,
    with --from-builder, the builder `pack build` would make for --buildpack, --env, --order
    or --run-image, without reading the existing builder's layers."""
    if from_builder is not None or not publish:
        ctx.obj.connect_daemon_soon()
    from packcache.builder.config import read_config
    from packcache.builder.flags import builder_options, string_to_string
    from packcache.operations.builder_report import Registry, check_pull_policy
    from packcache.operations.pack_config import read_pack_config
    from packcache.operations.run_image_fetch import resolve_pull_policy
    from packcache.transports.registry import RegistryOptions

    with reported():
        # The user's input first: a bad builder.toml is a usage error even with no daemon.
        extra_labels = string_to_string(labels or [], "--label")
        pack_config = read_pack_config()
        # pack refuses the flag --pull-policy never with --publish, not its config's value.
        check_pull_policy(pull_policy or "always", publish)
        policy = resolve_pull_policy(pull_policy, pack_config)
        registry = Registry(
            RegistryOptions(insecure=frozenset(insecure_registries or ())),
            publish,
            pack_config.lifecycle_image,
        )
        derived = _derived_request(
            config, from_builder, buildpacks, env, order, run_image, extensions
        )
        if derived is not None and (flatten or targets or append_image_name_suffix):
            raise UsageError("--flatten, --target and --append-image-name-suffix go with --config")
        if derived is not None and tags and not publish:
            raise UsageError(
                "--tag with --from-builder needs --publish (--tag, --flatten, --target and "
                "--append-image-name-suffix go with --config)"
            )
        options = builder_options(
            tags or [], flatten or [], targets or [], append_image_name_suffix
        )
        builder_config = read_config(config) if derived is None else None
        with ctx.obj.writing("create-builder", quiet, fmt) as (store, lease, shown):
            common = dict(
                pull_policy=policy,
                extra_labels=extra_labels,
                no_cache=no_cache,
                dry_run=dry_run,
                lease=lease,
                progress=shown,
            )
            if derived is not None:
                from packcache.operations.derived_builder import derive_builder

                report = derive_builder(
                    store, ctx.obj.daemon(shown), name, derived, registry=registry,
                    tags=options.tags, **common,
                )  # fmt: skip
            else:
                from packcache.operations.create_builder import create_builder

                daemon = None if publish else ctx.obj.daemon(shown)
                report = create_builder(
                    store, daemon, name, builder_config, options=options, registry=registry,
                    **common,
                )  # fmt: skip
    _write_report(report, report_file, fmt)
    if fmt is not Format.table:
        return
    for warning in report.warnings:
        typer.echo(f"Warning: {warning}", err=True)
    verb = "Would create" if report.dry_run else "Created"
    image = short_id(report.image_id) if report.image_id else short_id(report.config_digest)
    typer.echo(f"{verb} builder {report.name} ({image}), {len(report.diff_ids)} layers")
    if getattr(report, "from_builder", ""):
        saved = " (read with docker save)" if report.saved_builder else ", its layers left there"
        typer.echo(f"  from        {report.from_builder}{saved}")
    for buildpack in report.buildpacks:
        origin = "cache" if buildpack.reused else buildpack.kind
        what = " (extension)" if buildpack.module == "extension" else ""
        typer.echo(
            f"  {buildpack.id}@{buildpack.version:<12} from {origin:<10} {buildpack.source}{what}"
        )
    for tag in report.tags:
        typer.echo(f"  tagged      {tag}")
    typer.echo(f"  docker save {', '.join(report.imported) or 'none'}")
    for pulled in report.pulled:
        typer.echo(
            f"  registry    {pulled.ref}: {pulled.layers_downloaded} layers, "
            f"{render.size(pulled.bytes_downloaded)} downloaded"
        )
    if report.published is not None:
        published = report.published
        typer.echo(
            f"  published   {published.ref}@{published.digest}: "
            f"{len(published.uploaded)} blobs uploaded ({render.size(published.bytes_uploaded)}), "
            f"{len(published.mounted)} mounted, {len(published.present)} already there"
        )
    if report.load is not None and report.load.load_method == "present":
        typer.echo("  loaded      nothing: the daemon held this very builder, only named")
    elif report.load is not None:
        typer.echo(
            f"  loaded      {report.load.layers_sent} layers sent, "
            f"{report.load.layers_reused} already in the daemon, "
            f"{render.size(report.load.bytes_sent)} sent, by {report.load.load_method}"
        )
    typer.echo(f"  time        {report.seconds:.2f} s")


def _derived_request(
    config: Path | None,
    from_builder: str | None,
    buildpacks: list[str] | None,
    env: list[str] | None,
    order: list[str] | None,
    run_image: str | None,
    extensions: list[str] | None = None,
) -> "DerivedBuilderRequest | None":
    """What --from-builder and its options ask for (None for a builder.toml), checked."""
    if config is None and from_builder is None:
        # click's own words for a missing option, as before --from-builder existed
        raise UsageError("Missing option '--config' (or --from-builder BUILDER)")
    if config is not None and from_builder is not None:
        raise UsageError("--config and --from-builder do not go together")
    if from_builder is None:
        if buildpacks or env or order or run_image or extensions:
            raise UsageError(
                "--buildpack, --extension, --env, --order and --run-image need --from-builder"
            )
        return None
    from packcache.operations.derived_builder import DerivedBuilderRequest, parse_env, parse_order

    if order:
        parse_order(order)
    return DerivedBuilderRequest(
        from_builder=from_builder,
        buildpacks=list(buildpacks or []),
        extensions=list(extensions or []),
        env=parse_env(env or []),
        order=list(order) if order else None,
        run_image=run_image,
        base_dir=Path.cwd(),
    )


def main() -> NoReturn:
    """The `packcache` process: `run`, then the process ends at once. Tearing the interpreter
    down (freeing every module's objects, grpc's above all) costs more than a warm command's
    own work, and a command leaves nothing that needs it: exit handlers still run and output
    is flushed. Where a thread of the command still runs, or a profiler or tracer (coverage)
    watches and writes its data once `main` returns, the interpreter ends as usual."""
    try:
        run()
    except SystemExit as exc:
        code = exc.code
        watched = sys.getprofile() is not None or sys.gettrace() is not None
        if not isinstance(code, int) or watched or _threads_running():
            raise
    else:  # run() always exits; should it return, the usual exit says so
        raise SystemExit(0)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None  # reported as the interpreter reports it
    atexit._run_exitfuncs()
    with suppress(OSError, ValueError):  # what an exit handler printed
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _threads_running() -> bool:
    main_thread = threading.main_thread()
    return any(
        thread is not main_thread and not thread.daemon and thread.is_alive()
        for thread in threading.enumerate()
    )


def run() -> None:
    """The `packcache` command in this process, ended with SystemExit: every error, click's own
    usage errors (a bad option value, a missing argument) and bugs included, as one
    `packcache: error:` line on stderr and its exit code; -vv also logs a bug's traceback."""
    try:
        with _only_the_command_invoked(sys.argv[1:]):
            code = app(prog_name="packcache", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe is found here, not while the interpreter exits
    except typer.TyperException as exc:  # typer's click: usage errors have exit_code 2
        _exit_with(exc.format_message(), exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C outside a command's own handling
        typer.echo("packcache: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # the reader went away (`packcache ls | head`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_FAILED)
    except Exception as exc:
        shown = shown_error(exc)
        if shown is None:
            logging.getLogger("packcache").debug("the traceback:", exc_info=exc)
            shown = (
                f"unexpected {type(exc).__name__}: {exc} (a bug; -vv shows where)",
                EXIT_FAILED,
            )
        _exit_with(*shown)
    sys.exit(code if isinstance(code, int) else 0)


# The options before the command that take a value (`--cache-dir DIR`, `-H HOST`).
_VALUE_OPTIONS = ("--cache-dir", "--host", "-H", "--containerd-address", "--containerd-namespace")
_COMPLETION_VARIABLE = "_PACKCACHE_COMPLETE"  # set by the shell's completion script


def _invoked_command(args: list[str]) -> str | None:
    """The command `args` name after the top-level options, where no other reading of them is
    possible; None otherwise (no command, help, an option written some other way)."""
    index = 0
    while index < len(args):
        arg = args[index]
        option, equals, _ = arg.partition("=")
        if arg in _VALUE_OPTIONS:
            index += 2  # the option, then its value
            continue
        one_word = (
            (equals and option.startswith("--") and option in _VALUE_OPTIONS)
            or (arg.startswith("-H") and len(arg) > 2)  # -Hunix:///path
            or arg == "--verbose"
            or (len(arg) > 1 and arg.strip("v") == "-")  # -v, -vv
        )
        if one_word:
            index += 1
            continue
        return None if arg.startswith("-") else arg
    return None


@contextmanager
def _only_the_command_invoked(args: list[str]) -> Iterator[None]:
    """Have typer build only the command the arguments name: it reads every registered
    command's signature and options into click's on each start, which a command run does not
    need. Help without a command, completion, and anything not plainly a command's run see
    them all."""
    name = None if os.environ.get(_COMPLETION_VARIABLE) else _invoked_command(args)
    every = app.registered_commands
    chosen = [command for command in every if command.name == name]
    if chosen:
        app.registered_commands = chosen
    try:
        yield
    finally:
        app.registered_commands = every


def _exit_with(message: str, code: int) -> NoReturn:
    typer.echo(f"packcache: error: {message}", err=True)
    sys.exit(code)
