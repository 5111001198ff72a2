"""--target and [[targets]] for a builder made in the Docker daemon, as pack decides them
(internal/target/parse.go, internal/commands processMultiArchitectureConfig, pkg/client
daemonTarget): the daemon holds one platform, so exactly one target is used, the first that
matches the daemon's OS and architecture.
"""

from __future__ import annotations

from collections.abc import Iterable

from packcache.builder.config import Target
from packcache.builder.rules import BuilderError
from packcache.errors import UsageError

# pack's supportedOSArchs / supportedArchVariants (Go's GOOS/GOARCH pairs).
_OS_ARCHS = {
    "aix": ("ppc64",),
    "android": ("386", "amd64", "arm", "arm64"),
    "darwin": ("amd64", "arm64"),
    "dragonfly": ("amd64",),
    "freebsd": ("386", "amd64", "arm"),
    "illumos": ("amd64",),
    "ios": ("arm64",),
    "js": ("wasm",),
    "linux": (
        "386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le",
        "ppc64", "ppc64le", "riscv64", "s390x",
    ),
    "netbsd": ("386", "amd64", "arm"),
    "openbsd": ("386", "amd64", "arm", "arm64"),
    "plan9": ("386", "amd64", "arm"),
    "solaris": ("amd64",),
    "wasip1": ("wasm",),
    "windows": ("386", "amd64", "arm", "arm64"),
}  # fmt: skip
_ARCH_VARIANTS = {
    "386": ("softfloat", "sse2"),
    "arm": ("v5", "v6", "v7"),
    "amd64": ("v1", "v2", "v3", "v4"),
    "mips": ("hardfloat", "softfloat"),
    "mipsle": ("hardfloat", "softfloat"),
    "mips64": ("hardfloat", "softfloat"),
    "mips64le": ("hardfloat", "softfloat"),
    "ppc64": ("power8", "power9"),
    "ppc64le": ("power8", "power9"),
    "wasm": ("satconv", "signext"),
}
# `docker info` reports the kernel's machine name; pack compares Go's GOARCH names.
_MACHINE_TO_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
}


def _supported(os_name: str, arch: str, variant: str) -> bool:
    """pack's SupportsPlatform: an empty arch or variant is allowed."""
    if os_name not in _OS_ARCHS:
        return False
    if arch and arch not in _OS_ARCHS[os_name]:
        return False
    return not variant or variant in _ARCH_VARIANTS.get(arch, ())


def parse_target(text: str) -> Target:
    """[os][/arch][/variant][:distro@version;distro@version] (pack's ParseTarget)."""
    platform, _, distros_text = text.partition(":")
    if not platform and not distros_text:
        raise UsageError(
            f"--target {text!r}: invalid target, at least one of [os][/arch][/archVariant] "
            "must be specified"
        )
    parts = platform.split("/") if platform else []
    os_name, arch, variant = [*parts, "", "", ""][:3]
    if len(parts) > 3 or not _supported(os_name, arch, variant):
        raise UsageError(f"--target {text!r}: unknown target: '{platform}'")
    distros = []
    for item in filter(None, distros_text.split(";")):
        name, *versions = item.split("@")
        if not name:
            raise UsageError(
                f"--target {text!r}: distro's versions cannot be specified without its name"
            )
        if len(versions) > 1:
            raise UsageError(f"--target {text!r}: invalid distro: {item}")
        distros.append((name, versions[0] if versions else ""))
    return Target(os_name, arch, variant, tuple(distros))


def daemon_target(
    flags: Iterable[str], config_targets: list[Target], daemon_os: str, daemon_machine: str
) -> Target | None:
    """The target a daemon builder is made for: --target values override [[targets]]; more
    than one --target is refused; None when neither names any."""
    user = [parse_target(text) for text in flags]
    if len(user) > 1:
        raise UsageError("--target: when exporting to daemon only one target is allowed")
    targets = user or config_targets
    if not targets:
        return None
    arch = _MACHINE_TO_GOARCH.get(daemon_machine, daemon_machine)
    for target in targets:
        if target.os == daemon_os and target.arch in ("", arch):
            return target
    raise BuilderError(
        f"could not find a target that matches daemon os={daemon_os} and architecture={arch}"
    )


def check_build_image(target: Target | None, ref: str, os_name: str, arch: str) -> None:
    """The build image in the daemon is of the target's platform (pack fetches it for the
    target; packcache uses the image the daemon holds, so a mismatch is an error)."""
    if target is None:
        return
    if target.os != os_name or (target.arch and target.arch != arch):
        raise BuilderError(
            f"build image {ref} is {os_name}/{arch}, not the target {target.platform}"
        )
