"""`report.toml` as the lifecycle writes it after a rebase or an export (pack's
`--report-output-dir`): one `[image]` table with `tags`, and `image-id` for a daemon image or
`digest` and `manifest-size` for a registry one (lifecycle platform/files/report.go: empty
values and a zero size are left out).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from packcache.errors import PackcacheError

REPORT_NAME = "report.toml"


def _toml_string(text: str) -> str:
    # JSON's string escapes (\", \\, \n, \uXXXX) are all valid in a TOML basic string.
    return json.dumps(text)


def report_toml_text(
    *,
    tags: list[str],
    image_id: str | None = None,
    digest: str | None = None,
    manifest_size: int | None = None,
) -> str:
    """The file's text, laid out as the lifecycle's TOML encoder lays it out."""
    lines = ["[image]", f"  tags = [{', '.join(_toml_string(tag) for tag in tags)}]"]
    if image_id:
        lines.append(f"  image-id = {_toml_string(image_id)}")
    if digest:
        lines.append(f"  digest = {_toml_string(digest)}")
    if manifest_size:
        lines.append(f"  manifest-size = {int(manifest_size)}")
    return "\n".join(lines) + "\n"


def write_report_toml(
    directory: Path,
    *,
    tags: list[str],
    image_id: str | None = None,
    digest: str | None = None,
    manifest_size: int | None = None,
) -> Path:
    """Write `directory`/report.toml (the directory is made if missing), replacing any
    earlier one whole: a reader never sees half a report."""
    text = report_toml_text(
        tags=tags, image_id=image_id, digest=digest, manifest_size=manifest_size
    )
    import tempfile  # imported here: most runs write no report.toml

    target = directory / REPORT_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".report-", suffix=".toml", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PackcacheError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target
