"""builder.toml: what pack accepts is read the same; every problem names the key and its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from packcache.builder.config import ConfigError, read_config

VALID = """description = "d"

[[buildpacks]]
  uri = "docker://example/package:1"

[[buildpacks]]
  uri = "bp-dir"
  id = "test/dir"
  version = "1.0.0"

[[order]]
  [[order.group]]
    id = "test/dir"
  [[order.group]]
    id = "example/package"
    version = "2.0.0"
    optional = true

[build]
  image = "build:1"
  [[build.env]]
    name = "A"
    value = "1"
  [[build.env]]
    name = "P"
    value = "/x"
    suffix = "prepend"
    delim = ":"

[[run.images]]
  image = "run:1"
  mirrors = ["m:1"]

[lifecycle]
  uri = "lifecycle.tgz"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "builder.toml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        read_config(write(tmp_path, text))
    return str(caught.value)


def test_valid_config_is_read_as_pack_reads_it(tmp_path) -> None:
    config = read_config(write(tmp_path, VALID))
    assert config.description == "d"
    assert [b.uri for b in config.buildpacks] == ["docker://example/package:1", "bp-dir"]
    assert (config.buildpacks[1].id, config.buildpacks[1].version) == ("test/dir", "1.0.0")
    assert [[(r.id, r.version, r.optional) for r in g] for g in config.order] == [
        [("test/dir", "", False), ("example/package", "2.0.0", True)]
    ]
    assert config.build_image == "build:1"
    # [[run.images]] becomes the stack run image (pack's mergeStackWithImages)
    assert config.stack_run_image == "run:1" and config.stack_run_image_mirrors == ["m:1"]
    assert config.build_config_env() == {"A": "1", "P.prepend": "/x", "P.delim": ":"}
    assert config.lifecycle_uri == "lifecycle.tgz"
    assert config.order[0][1].line == 14  # the [[order.group]] header of that ref


def test_old_stack_keys_still_work(tmp_path) -> None:
    config = read_config(
        write(
            tmp_path,
            '[stack]\n  id = "s"\n  build-image = "b:1"\n  run-image = "r:1"\n'
            '  run-image-mirrors = ["m:1"]\n[lifecycle]\n  uri = "l.tgz"\n',
        )
    )
    assert config.build_image == "b:1" and config.stack_id == "s"
    assert [(r.image, r.mirrors) for r in config.run_images] == [("r:1", ["m:1"])]
    assert config.order is None


def test_deprecated_image_key_names_a_daemon_image(tmp_path) -> None:
    text = VALID.replace('uri = "docker://example/package:1"', 'image = "example/package:1"')
    assert read_config(write(tmp_path, text)).buildpacks[0].uri == "docker://example/package:1"


# Each case: the edit, the line the error must point at (its text, and which occurrence),
# and words the message must contain.
CASES = [
    ('  uri = "bp-dir"', '  uri = "bp-dir"\n  url = "x"', '  url = "x"', "'buildpacks[1].url'"),
    ('description = "d"', 'descripton = "d"', 'descripton = "d"', "unknown key 'descripton'"),
    ("    optional = true", "    optional = true\n    optinal = 1", "    optinal = 1", "optinal'"),
    ('    name = "A"', '    nam = "A"', '    nam = "A"', "unknown key 'build.env[0].nam'"),
    ("[lifecycle]", "[extensions]\n[lifecycle]", "[extensions]", "([[extensions]])"),
    ('  mirrors = ["m:1"]', '  mirrors = "m:1"', '  mirrors = "m:1"', "must be an array"),
    ("    optional = true", '    optional = "yes"', '    optional = "yes"', "true or false"),
    ('  uri = "bp-dir"\n', "", ("[[buildpacks]]", 1), "'buildpacks[1]' needs a uri"),
    ('  uri = "bp-dir"', '  uri = "bp-dir"\n  image = "x:1"', '  image = "x:1"', "not both"),
    ('    id = "test/dir"\n', '    version = "1"\n', ("  [[order.group]]", 0), "needs an id"),
    ('  image = "build:1"', '  image = "build:1"\n[stack]\n  build-image = "o:1"',
     '  build-image = "o:1"', "do not match"),
    ('[build]\n  image = "build:1"', "[build]", "[build]", "build.image (or stack.build-image)"),
    ('    suffix = "prepend"', '    suffix = "before"', '    suffix = "before"', "use default,"),
    ('    delim = ":"', "", '    suffix = "prepend"', "with suffix prepend needs a delim"),
    ('  uri = "lifecycle.tgz"', '  uri = "lifecycle.tgz"\n  version = "0.20.0"',
     '  version = "0.20.0"', "version or uri, not both"),
    ('[[run.images]]\n  image = "run:1"\n  mirrors = ["m:1"]', "", None, "run.images"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "where", "needle"), CASES)
def test_errors_name_the_key_and_the_line(tmp_path, old, new, where, needle) -> None:
    assert old in VALID
    text = VALID.replace(old, new, 1)
    message = error(tmp_path, text)
    assert needle in message
    if where is not None:
        marker, occurrence = where if isinstance(where, tuple) else (where, 0)
        numbers = [n for n, line in enumerate(text.splitlines(), 1) if line == marker]
        assert f"builder.toml:{numbers[occurrence]}:" in message


def test_run_image_mismatch_between_stack_and_run(tmp_path) -> None:
    text = VALID + '\n[stack]\n  id = "s"\n  run-image = "other:1"\n'
    assert "stack.run-image (other:1) and run.images[0].image (run:1) do not match" in error(
        tmp_path, text
    )


def test_invalid_toml_says_where(tmp_path) -> None:
    assert "not valid TOML" in error(tmp_path, 'description = "x\n')


def test_multiline_values_do_not_confuse_line_numbers(tmp_path) -> None:
    text = (
        'description = """\n[fake]\nkey = 1\n"""\n'
        '[[run.images]]\n  image = "r:1"\n  mirrors = [\n    "a",\n    "b",\n  ]\n'
        '[build]\n  image = "b:1"\n  bogus = 1\n[lifecycle]\n  uri = "l"\n'
    )
    assert "builder.toml:13: unknown key 'build.bogus'" in error(tmp_path, text)


def test_a_builder_toml_that_is_not_utf8_says_so(tmp_path) -> None:
    path = tmp_path / "builder.toml"
    path.write_bytes(b'description = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config(path)


def test_a_bad_builder_toml_is_a_usage_error_before_the_daemon_is_asked(cli, tmp_path) -> None:
    path = tmp_path / "builder.toml"
    path.write_text("description = 3\n")
    result = cli(
        "--host", f"unix://{tmp_path}/no.sock", "create-builder", "b:1", "--config", str(path)
    )
    assert result.exit_code == 2
    assert result.stderr == f"packcache: error: {path}:1: 'description' must be a string\n"


# -- pack's other builder.toml tables: extensions, their order, system buildpacks, targets ---

MORE = """
[[extensions]]
  uri = "ext-dir"
  id = "test/ext"

[[order-extensions]]
  [[order-extensions.group]]
    id = "test/ext"
    optional = true

[system]
  [system.pre]
    [[system.pre.buildpacks]]
      id = "test/dir"
  [system.post]
    [[system.post.buildpacks]]
      id = "example/package"
      version = "2.0.0"
      optional = true

[[targets]]
  os = "linux"
  arch = "arm"
  variant = "v7"
  [[targets.distros]]
    name = "ubuntu"
    version = "22.04"
"""


def test_extensions_system_and_targets_are_read_as_pack_reads_them(tmp_path) -> None:
    config = read_config(write(tmp_path, VALID + MORE))
    assert [(e.uri, e.id) for e in config.extensions] == [("ext-dir", "test/ext")]
    assert [[(r.id, r.optional) for r in g] for g in config.order_extensions] == [
        [("test/ext", True)]
    ]
    assert [(r.id, r.version) for r in config.system_pre] == [("test/dir", "")]
    assert [(r.id, r.version, r.optional) for r in config.system_post] == [
        ("example/package", "2.0.0", True)
    ]
    (target,) = config.targets
    assert (target.platform, target.distros) == ("linux/arm/v7", (("ubuntu", "22.04"),))
    assert read_config(write(tmp_path, VALID)).order_extensions is None


MORE_CASES = [
    ('  id = "test/ext"', '  id = "test/ext"\n  uri2 = "x"', '  uri2 = "x"', "s[0].uri2"),
    ('    optional = true\n\n[system]', '    optional = "y"\n\n[system]', '    optional = "y"',
     "true or false"),
    ("  [system.pre]", "  [system.during]", "  [system.during]", "unknown key 'system.during'"),
    ('      id = "test/dir"', '      idd = "test/dir"', '      idd = "test/dir"',
     "'system.pre.buildpacks[0].idd'"),
    ('  variant = "v7"', '  variant = 7', '  variant = 7', "'targets[0].variant' must be a string"),
    ('    name = "ubuntu"', '    nme = "ubuntu"', '    nme = "ubuntu"',
     "unknown key 'targets[0].distros[0].nme'"),
    ('  uri = "ext-dir"\n', "", ("[[extensions]]", 0), "'extensions[0]' needs a uri"),
    ('  uri = "lifecycle.tgz"', '  version = "latest"', '  version = "latest"', "valid semver"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "where", "needle"), MORE_CASES)
def test_errors_in_the_new_tables_name_the_key_and_the_line(tmp_path, old, new, where, needle):
    text = (VALID + MORE).replace(old, new, 1)
    assert text != VALID + MORE
    message = error(tmp_path, text)
    assert needle in message
    marker, occurrence = where if isinstance(where, tuple) else (where, 0)
    numbers = [n for n, line in enumerate(text.splitlines(), 1) if line == marker]
    assert f"builder.toml:{numbers[occurrence]}:" in message


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--label", "novalue", "--label 'novalue': expected KEY=VALUE"),
        ("--tag", "Bad:Tag", "invalid image reference 'Bad:Tag'"),
        ("--target", "linux/sparc", "unknown target: 'linux/sparc'"),
        ("--flatten", "a@1@2", "--flatten: invalid format a@1@2"),
    ],
)
def test_bad_flags_are_usage_errors_before_the_daemon_is_asked(cli, tmp_path, flag, value, needle):
    path = write(tmp_path, VALID)
    result = cli(
        "--host", f"unix://{tmp_path}/no.sock", "create-builder", "b:1", "--config", str(path),
        flag, value,
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("packcache: error: ") and result.stderr.count("\n") == 1
    assert needle in result.stderr
