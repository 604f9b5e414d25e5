"""The settings schema: kinds of values, their checks, dotted names derived from dataclasses.

A settings field is typed with one of the kinds below (``Seconds``, ``Size``,
``Mode``, a ``Literal`` of choices, ...) and names its place in the TOML file
with :func:`toml`.  :func:`schema_of` walks the dataclasses and derives, for
every dotted name (``fs.writeback_delay``), the field it fills and how its
value is checked, so the file format, its checks, its error messages and the
defaults (the fields' own) are all read off the settings dataclasses.  The
standard library is enough for that (a type-to-check table of a dozen lines);
a library such as msgspec or cattrs would word the errors its own way.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from cosencfs.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """``"512M"``, ``"2GiB"``, ``"1048576"`` -> bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M or 10G)")
    number = float(m.group(1))
    unit = m.group(2).upper()
    mult = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    return int(number * mult)


# ---------------------------------------------------------------------------
# Checks: each takes what TOML (or argparse) gave and returns the value, or
# raises ValueError saying what was expected; the caller adds the name.


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _num(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("expected a number")
    if v < 0:
        raise ValueError("must not be negative")
    return float(v)


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("expected a whole number")
    if v < 0:
        raise ValueError("must not be negative")
    return v


def _pos_int(v: object) -> int:
    n = _int(v)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


def _size(v: object) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return _int(v)
    if isinstance(v, str):
        try:
            return parse_size(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError("expected a size such as 512M or 10G")


def _mode(v: object) -> int:
    if isinstance(v, str):
        try:
            return int(v, 8) & 0o7777
        except ValueError:
            raise ValueError('expected an octal mode such as "0644"') from None
    return _int(v) & 0o7777


def _host_port(v: object) -> str:
    """``HOST:PORT``, ``[V6]:PORT``, or a port alone (on 127.0.0.1: only this
    host sees it unless the operator names another address)."""
    text = _str(v if not isinstance(v, int) or isinstance(v, bool) else str(v)).strip()
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = "", text
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT or a port, not {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def _strlist(v: object) -> list[str]:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return list(v)


def _choice(*choices: str) -> Callable[[object], str]:
    def conv(v: object) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(v)

    return conv


Check = Callable[[object], Any]

#: Kinds of values whose check is not the plain type's.
Seconds = Annotated[float, _num]
Count = Annotated[int, _int]
AtLeastOne = Annotated[int, _pos_int]
Size = Annotated[int, _size]
Mode = Annotated[int, _mode]
HostPort = Annotated[str, _host_port]

#: Checks of plain types.  A bool is taken as Python's truth of the value,
#: as the settings always have been.
_BY_TYPE: dict[object, Check] = {str: _str, bool: bool, list[str]: _strlist}


def _check_for(hint: object) -> Check:
    if typing.get_origin(hint) is Annotated:
        check: Check = hint.__metadata__[0]  # type: ignore[attr-defined]
        return check
    if typing.get_origin(hint) is Literal:
        return _choice(*typing.get_args(hint))
    if typing.get_origin(hint) in (Union, types.UnionType):
        # ``X | None``: None is the field's "not given", never a TOML value.
        (inner,) = (a for a in typing.get_args(hint) if a is not type(None))
        return _check_for(inner)
    if hint in _BY_TYPE:
        return _BY_TYPE[hint]
    raise TypeError(f"no settings check for {hint!r}")


# ---------------------------------------------------------------------------
# Where a field lives in the file


@dataclass(slots=True, frozen=True)
class Setting:
    """A field's dotted name in the TOML file, and whether it makes the file secret."""

    name: str
    secret: bool = False


_META = "cosencfs.setting"


def toml(name: str, *, secret: bool = False) -> dict[str, Setting]:
    """A field's metadata making it the TOML setting ``name``:
    ``x: Seconds = field(default=1.0, metadata=toml("fs.x"))``."""
    return {_META: Setting(name, secret)}


@dataclass(slots=True, frozen=True)
class Field:
    """One setting of the schema: which attribute it fills and how it is checked."""

    #: Attribute names from the settings object down to the field.
    path: tuple[str, ...]
    check: Check
    secret: bool


def schema_of(cls: type, path: tuple[str, ...] = ()) -> dict[str, Field]:
    """Dotted name -> Field for every field of ``cls`` (and its nested settings) that
    is a setting; nested dataclass fields without a name of their own are walked."""
    out: dict[str, Field] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        meta: Setting | None = f.metadata.get(_META)
        hint = hints[f.name]
        if meta is not None:
            out[meta.name] = Field((*path, f.name), _check_for(hint), meta.secret)
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out.update(schema_of(hint, (*path, f.name)))
    return out


def validate(schema: Mapping[str, Field], values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Dotted names -> checked values; errors name the setting and ``source``."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        spec = schema.get(name)
        if spec is None:
            raise ConfigError(f"{source}: unknown setting {name!r}")
        try:
            out[name] = spec.check(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: setting {name!r}: {exc}") from None
    return out


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML document -> dotted names."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out
