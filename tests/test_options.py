"""Typed plugin options: ``-o key=value`` parsed by the dataclass field's type, help from docstrings."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional

import pytest

from featureforge.errors import FeatureforgeError, OptionError
from featureforge.options import NoOptions, describe_options, field_docs, options_to_dict, parse_options, parse_value


@dataclasses.dataclass
class Opts:
    width: int = 8
    """Width of a row."""
    rate: float = 0.5
    """A rate,
    over two lines."""
    flag: bool = False
    """Turn it on."""
    mode: Literal["fast", "exact"] = "fast"
    """How to compute."""
    limit: Optional[int] = None
    """Upper bound, or none."""
    cap: float | None = 1.0
    layers: list[int] = dataclasses.field(default_factory=lambda: [6])
    """Comma list of layers."""
    names: tuple[str, ...] = ()
    out: Path = Path("out")
    label: str = dataclasses.field(default="x", metadata={"help": "Help from metadata."})


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- parsing by type --------------------------------------------------------------------------------
def test_parses_each_type_from_text():
    opts = parse_options(Opts, ["width=32", "rate=1e-3", "flag=yes", "mode=exact", "limit=7", "cap=none",
                                "layers=4, 8,12", "names=a,b", "out=~/runs", "label=hello=world"])
    assert opts.width == 32 and type(opts.width) is int
    assert opts.rate == 0.001 and type(opts.rate) is float
    assert opts.flag is True
    assert opts.mode == "exact"
    assert opts.limit == 7
    assert opts.cap is None
    assert opts.layers == [4, 8, 12]
    assert opts.names == ("a", "b")
    assert opts.out == Path("~/runs").expanduser()
    assert opts.label == "hello=world"  # only the first '=' separates key and value


def test_defaults_when_nothing_given():
    assert parse_options(Opts) == Opts()
    assert parse_options(Opts, []) == Opts()
    assert parse_options(NoOptions, None) == NoOptions()


@pytest.mark.parametrize("text, expected", [("true", True), ("1", True), ("On", True), ("false", False), ("no", False), ("0", False)])
def test_bool_spellings(text, expected):
    assert parse_options(Opts, [f"flag={text}"]).flag is expected


def test_int_accepts_underscores_and_optional_accepts_none():
    assert parse_options(Opts, ["width=1_000"]).width == 1000
    assert parse_options(Opts, ["limit=none"]).limit is None
    assert parse_options(Opts, ["limit="]).limit is None
    assert parse_options(Opts, ["limit=null"]).limit is None


def test_dashes_in_keys_are_underscores():
    @dataclasses.dataclass
    class Dashed:
        n_rows: int = 1

    assert parse_options(Dashed, ["n-rows=5"]).n_rows == 5


def test_mapping_values_are_taken_as_they_are():
    opts = parse_options(Opts, {"width": 3, "layers": [1, 2], "mode": "exact"})
    assert opts.width == 3 and opts.layers == [1, 2] and opts.mode == "exact"
    # Strings in a mapping are parsed like command-line text.
    assert parse_options(Opts, {"width": "12"}).width == 12


# -- bad values and unknown keys ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "pair, message",
    [
        ("width=abc", "option width='abc' is not an int"),
        ("width=1.5", "option width='1.5' is not an int"),
        ("rate=fast", "option rate='fast' is not a float"),
        ("flag=maybe", "option flag='maybe' is not a bool; use true or false"),
        ("mode=slow", "option mode='slow' must be one of: fast, exact"),
        ("limit=lots", "option limit='lots' is not an int or None"),
        ("layers=1,x", "option layers='x' is not an int"),
    ],
)
def test_badly_typed_value_is_one_line_naming_key_and_type(pair, message):
    with pytest.raises(OptionError) as exc:
        parse_options(Opts, [pair])
    assert one_line(exc) == message


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(OptionError) as exc:
        parse_options(Opts, ["nope=1"], owner="source 'demo'")
    assert one_line(exc) == ("unknown option 'nope' for source 'demo'; valid options: width, rate, flag, mode, limit, "
                             "cap, layers, names, out, label")
    with pytest.raises(OptionError, match="unknown option 'nope'; valid options: none"):
        parse_options(NoOptions, {"nope": 1})


def test_pair_without_equals_sign_says_how_to_write_it():
    with pytest.raises(OptionError) as exc:
        parse_options(Opts, ["width"])
    assert one_line(exc) == "option 'width' is not key=value; write e.g. -o width=VALUE"


def test_missing_required_field_is_an_option_error():
    @dataclasses.dataclass
    class Required:
        path: str

    with pytest.raises(OptionError, match="invalid options for source 'r'.*path"):
        parse_options(Required, [], owner="source 'r'")


def test_option_error_is_a_value_error_and_a_featureforge_error():
    assert issubclass(OptionError, ValueError) and issubclass(OptionError, FeatureforgeError)


def test_parse_value_refuses_unsupported_types():
    with pytest.raises(OptionError, match="option k has an unsupported type dict"):
        parse_value("1", dict, "k")


# -- help text and listing ---------------------------------------------------------------------------
def test_field_docstrings_become_help():
    docs = field_docs(Opts)
    assert docs["width"] == "Width of a row."
    assert docs["rate"] == "A rate,\nover two lines."
    assert docs["label"] == "Help from metadata."
    assert "cap" not in docs and "names" not in docs  # no docstring under them


def test_field_docstrings_of_a_nested_options_class_and_inherited_fields():
    class Holder:
        @dataclasses.dataclass
        class Options:
            k: int = 32
            """Active latents per row."""

    @dataclasses.dataclass
    class More(Holder.Options):
        lr: float = 1e-3
        """Learning rate."""

    assert field_docs(Holder.Options) == {"k": "Active latents per row."}
    assert field_docs(More) == {"k": "Active latents per row.", "lr": "Learning rate."}


def test_describe_options_gives_type_default_and_help():
    rows = {row["name"]: row for row in describe_options(Opts)}
    assert rows["width"] == {"name": "width", "type": "int", "default": 8, "help": "Width of a row."}
    assert rows["mode"]["type"] == "fast|exact"
    assert rows["limit"]["type"] == "int or None" and rows["limit"]["default"] is None
    assert rows["layers"]["type"] == "comma list of int" and rows["layers"]["default"] == [6]
    assert rows["out"]["default"] == "out" and rows["out"]["type"] == "Path"
    assert rows["cap"]["help"] == ""


def test_options_to_dict_is_json_ready():
    data = options_to_dict(parse_options(Opts, ["names=a,b", "out=runs"]))
    assert data["names"] == ["a", "b"] and data["out"] == "runs" and data["width"] == 8


def test_plugin_constructor_takes_keywords_mapping_or_pairs():
    from featureforge.builtin.synthetic import SyntheticSource as source_cls

    assert source_cls(d_in=8).options.d_in == 8
    assert source_cls({"d_in": 9}).options.d_in == 9
    assert source_cls(["d_in=10"]).options.d_in == 10
    with pytest.raises(OptionError, match="unknown option 'nope' for source 'synthetic'"):
        source_cls(nope=1)
    with pytest.raises(TypeError, match="either"):
        source_cls({"d_in": 8}, seed=1)


# -- the command line --------------------------------------------------------------------------------
def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATUREFORGE_")}
    env.update(FEATUREFORGE_PROGRESS="0", FEATUREFORGE_PLUGINS="")
    return subprocess.run([sys.executable, "-m", "featureforge.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_cli_unknown_option_is_refused_with_the_valid_list(tmp_path):
    store = tmp_path / "s.zarr"
    result = run_cli("cache", "--source", "synthetic", "-o", "nope=1", "--store", str(store), "--rows", "10", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: unknown option 'nope' for source 'synthetic'; valid options: d_in, n_features, mean_active,")
    assert ", seed" in lines[0] and lines[0].count(",") >= 10, "every valid option is listed"
    assert not store.exists()


def test_cli_badly_typed_option_names_the_key(tmp_path):
    result = run_cli("cache", "--source", "synthetic", "-o", "d_in=abc", "--store", str(tmp_path / "s.zarr"), "--rows", "10", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["Error: option d_in='abc' is not an int"]


def test_cli_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "cache", "--source", "synthetic", "-o", "d_in=abc", "--store", str(tmp_path / "s.zarr"),
                     "--rows", "10", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "OptionError: option d_in='abc' is not an int" in result.stderr


def test_one_parser_reads_every_key_value_flag(tmp_path):
    from featureforge.options import split_pairs
    from featureforge.training import expand_sweep

    assert split_pairs([" d-in =8", "name=a=b", "empty="], "k=1") == [("d_in", "8"), ("name", "a=b"), ("empty", "")]
    with pytest.raises(OptionError) as exc:
        split_pairs(["log_every"], "log_every=100", flag="-t")
    assert one_line(exc) == "option 'log_every' is not key=value; write e.g. -t log_every=100"
    with pytest.raises(OptionError) as exc:
        expand_sweep(Opts, ["width"])
    assert one_line(exc) == "option 'width' is not key=value; write e.g. -o key=VALUE"
    result = subprocess.run([sys.executable, "-m", "featureforge.cli", "train", "--trainer", "x", "--store", str(tmp_path / "s"),
                             "--out", str(tmp_path / "r"), "-t", "log_every"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "FEATUREFORGE_PLUGINS": ""})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: option 'log_every' is not key=value; write e.g. -t log_every=100"]


class Color:
    """A custom class: no way to write one on the command line."""


def test_option_types_the_parser_cannot_read_are_found_before_any_value_is_given():
    from featureforge.options import SUPPORTED_TYPES, unsupported_option_types

    @dataclasses.dataclass
    class Bad:
        weights: dict[str, float] = dataclasses.field(default_factory=dict)
        color: Optional[Color] = None
        nested: list[list[int]] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass
    class Good:
        a: int = 1
        b: Optional[float] = None
        c: Literal["x", "y"] = "x"
        d: tuple[int, ...] = ()
        e: list[Path] = dataclasses.field(default_factory=list)
        f: bool | str = False

    assert unsupported_option_types(Good) == "" and unsupported_option_types(Opts) == ""
    message = unsupported_option_types(Bad)
    assert message == ("option type not supported (weights: dict[str, float], color: Optional[Color], "
                       f"nested: list[list[int]]); supported types: {SUPPORTED_TYPES}")
