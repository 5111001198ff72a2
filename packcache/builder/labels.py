"""The builder's labels and its /cnb/*.toml files, written as pack writes them.

Labels are Go's encoding/json output (compact, struct fields in declaration order, map keys
sorted, <, > and & escaped); order.toml, stack.toml and run.toml are BurntSushi/toml encoder
output (two-space indents per table level). The same inputs give the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from packcache.builder.descriptors import BuildpackDescriptor, LifecycleDescriptor


def go_json(value: Any) -> str:
    """json.Marshal's bytes for plain data (dicts must already be in Go's key order)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def sorted_map(mapping: dict[str, Any]) -> dict[str, Any]:
    """Go marshals map keys in byte order."""
    return {k: mapping[k] for k in sorted(mapping, key=lambda k: k.encode())}


def layer_info(descriptor: BuildpackDescriptor, diff_id: str) -> dict[str, Any]:
    """pack's dist.ModuleLayerInfo for one buildpack."""
    entry: dict[str, Any] = {"api": descriptor.api}
    if descriptor.stacks:
        entry["stacks"] = descriptor.stacks
    if descriptor.targets:
        entry["targets"] = descriptor.targets
    if descriptor.order:
        entry["order"] = descriptor.order
    entry["layerDiffID"] = diff_id
    if descriptor.info.get("homepage"):
        entry["homepage"] = descriptor.info["homepage"]
    if descriptor.info.get("name"):
        entry["name"] = descriptor.info["name"]
    return entry


def buildpack_layers_label(layers: dict[str, dict[str, dict[str, Any]]]) -> str:
    return go_json(sorted_map({k: sorted_map(v) for k, v in layers.items()}))


def order_json(order: list[list[dict[str, Any]]] | None) -> str:
    """io.buildpacks.buildpack.order: the order as builder.toml wrote it ("null" if none)."""
    if order is None:
        return "null"
    return go_json([{"group": group} for group in order])


def run_image_json(image: str, mirrors: list[str] | None) -> dict[str, Any]:
    return {"image": image, "mirrors": mirrors}


def builder_metadata(
    *,
    description: str,
    buildpacks: list[dict[str, Any]],
    stack_run_image: dict[str, Any],
    lifecycle: LifecycleDescriptor,
    created_by: dict[str, str],
    run_images: list[dict[str, Any]],
    extensions: list[dict[str, Any]] | None = None,
) -> str:
    """io.buildpacks.builder.metadata, field for field as pack's builder.Metadata."""
    return go_json(
        {
            "description": description,
            "buildpacks": buildpacks or None,
            "extensions": extensions or None,
            "stack": {"runImage": stack_run_image},
            "lifecycle": lifecycle.to_json(),
            "createdBy": created_by,
            "images": run_images or None,
        }
    )


# -- TOML, as BurntSushi/toml encodes pack's structs --------------------------------------


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


class _TomlWriter:
    """BurntSushi's layout: a blank line before each [[table]] entry but the first output."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def array_table(self, key: str, depth: int) -> None:
        if self.parts:
            self.parts.append("\n")
        self.parts.append("  " * depth + f"[[{key}]]\n")

    def table(self, key: str, depth: int = 0) -> None:
        """BurntSushi writes the blank line only before a top-level [table]."""
        if self.parts and depth == 0:
            self.parts.append("\n")
        self.parts.append("  " * depth + f"[{key}]\n")

    def value(self, key: str, value: Any, depth: int) -> None:
        self.parts.append("  " * depth + f"{key} = {_toml_value(value)}\n")

    def text(self) -> str:
        return "".join(self.parts)


def _refs(out: _TomlWriter, key: str, refs: list[dict[str, Any]], depth: int) -> None:
    """An array of pack's dist.ModuleRef tables at `key`, `depth` levels deep."""
    for ref in refs:
        out.array_table(key, depth)
        for name, value in ref.items():
            if name == "licenses":
                continue  # an array of tables inside a ref: nothing the lifecycle reads
            out.value(name, value, depth + 1)


def order_toml(
    order: list[list[dict[str, Any]]], order_extensions: list[list[dict[str, Any]]] = ()
) -> str:
    """/cnb/order.toml from the resolved orders (every ref has its version): pack's orderTOML,
    [[order]] then [[order-extensions]], each left out when empty."""
    out = _TomlWriter()
    for key, groups in (("order", order), ("order-extensions", order_extensions)):
        for group in groups:
            out.array_table(key, 0)
            _refs(out, f"{key}.group", group, 1)
    return out.text()


def system_json(pre: list[dict[str, Any]], post: list[dict[str, Any]]) -> str:
    """io.buildpacks.buildpack.system: pack's dist.System as encoding/json writes it (omitempty
    leaves an empty buildpacks list out, never the pre/post structs)."""
    return go_json(
        {
            "pre": {"buildpacks": pre} if pre else {},
            "post": {"buildpacks": post} if post else {},
        }
    )


def system_toml(pre: list[dict[str, Any]], post: list[dict[str, Any]]) -> str:
    """/cnb/system.toml from the resolved system buildpacks: pack's systemTOML, [system] with
    [system.pre] / [system.post] (an empty one left out, as BurntSushi's omitempty does)."""
    out = _TomlWriter()
    out.table("system", 0)
    for part, refs in (("pre", pre), ("post", post)):
        if refs:
            out.table(f"system.{part}", 1)
            _refs(out, f"system.{part}.buildpacks", refs, 2)
    return out.text()


def stack_toml(run_image: str, mirrors: list[str] | None) -> str:
    """/cnb/stack.toml: [run-image] (empty when there is no run image)."""
    if not run_image:
        return ""
    out = _TomlWriter()
    out.table("run-image")
    out.value("image", run_image, 1)
    if mirrors is not None:
        out.value("mirrors", mirrors, 1)
    return out.text()


def run_toml(run_images: list[dict[str, Any]]) -> str:
    """/cnb/run.toml: one [[images]] per run image."""
    out = _TomlWriter()
    for image in run_images:
        out.array_table("images", 0)
        out.value("image", image["image"], 1)
        if image["mirrors"] is not None:
            out.value("mirrors", image["mirrors"], 1)
    return out.text()
