"""Stored state and registry artifacts as JSON documents: reading one back builds data, it never runs code.

A document is ``{"schema": <name>, "version": <n>, "data": <value>}``: a reader accepts its own schema name and
version only. Values are JSON, with tagged objects ``{"__stored__": <tag>, ...}`` for what JSON lacks:

- ``tuple``; ``float`` for NaN and the infinities (JSON has neither); ``dict`` for keys that are not strings;
- ``ndarray`` and ``scalar``: numpy data as ``.npy`` bytes in base64, read back with ``allow_pickle=False`` (the
  same bits, dtype and shape; object arrays are refused both ways);
- ``timestamp``: a pandas timestamp as nanoseconds since the epoch and its time zone's name;
- ``dataclass``: an instance of a dataclass its module allowed with :func:`register_stored` (the allow-list, by
  class name). A blob can only name a registered class (no module path is ever read from a blob), every field is
  checked against the class's type hints, and the class's own constructor builds it, so its ``__post_init__``
  checks run too.

Anything else, either way, raises :class:`StoredStateError` with one line naming the source and the place in
the value. Pickles (the format before these documents) are recognised and refused with
:class:`PickledStateError`, never loaded.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import math
import pickletools
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

import numpy as np
import pandas as pd

TAG = "__stored__"
_DOCUMENT_KEYS = frozenset({"schema", "version", "data"})
# Every pickle protocol from 2 on starts with the PROTO opcode.
_PICKLE_PROTO = b"\x80"

# Class name -> every dataclass a stored document may hold: the decoder's allow-list (see register_stored).
_STORED: dict[str, type] = {}


class StoredStateError(ValueError):
    """A stored document is foreign, corrupt, of another schema version, or a value cannot be stored."""


class PickledStateError(StoredStateError):
    """A stored blob is a pickle, the format written before JSON documents; it is refused, never unpickled."""


def register_stored(*classes: type) -> None:
    """Allow stored documents to hold instances of these dataclasses, known by class name.

    :raises TypeError: a class that is not a dataclass
    :raises ValueError: another registered class has the same name
    """
    for cls in classes:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"only dataclasses can be stored, not {cls!r}")
        known = _STORED.setdefault(cls.__name__, cls)
        if known is not cls:
            raise ValueError(f"two stored dataclasses are named {cls.__name__}: {known!r} and {cls!r}")


def stored_dataclasses() -> dict[str, type]:
    """The allow-list: class name -> dataclass."""
    return dict(_STORED)


# ------------------------------------------------------------------------------------------------ documents


def to_document(schema: str, version: int, data: Any) -> dict[str, Any]:
    """``data`` as a JSON-ready document of ``schema`` at ``version``."""
    return {"schema": schema, "version": version, "data": encode(data)}


def from_document(document: Any, schema: str, version: int, source: str) -> Any:
    """The value of a document written by :func:`to_document`.

    :param document: the parsed JSON
    :param schema: the schema name the reader expects
    :param version: the only version the reader understands
    :param source: names the document in errors (a file, a session)
    :raises StoredStateError: a foreign document, another version, or a corrupt value
    """
    if not isinstance(document, Mapping) or set(document) != _DOCUMENT_KEYS:
        keys = sorted(document) if isinstance(document, Mapping) else type(document).__name__
        raise StoredStateError(
            f"{source}: not a stored document (expected keys schema, version, data; got {keys})"
        )
    if document["schema"] != schema:
        raise StoredStateError(f"{source}: holds a {document['schema']!r} document, not {schema!r}")
    if document["version"] != version:
        raise StoredStateError(
            f"{source}: {schema} version {document['version']!r} is not the supported version {version}"
        )
    try:
        return decode(document["data"])
    except StoredStateError as error:
        raise StoredStateError(f"{source}: {error}") from None
    except RecursionError:
        raise StoredStateError(f"{source}: nested too deeply") from None


def dumps(schema: str, version: int, data: Any) -> str:
    """``data`` as the text of a document (strict JSON: no NaN tokens)."""
    return json.dumps(to_document(schema, version, data), allow_nan=False, separators=(",", ":"))


def loads(blob: bytes | str, schema: str, version: int, source: str) -> Any:
    """The value of a document's text; see :func:`from_document`.

    :raises PickledStateError: the blob is a pickle (it is not unpickled)
    :raises StoredStateError: anything else that is not a valid document
    """
    raw = blob.encode() if isinstance(blob, str) else bytes(blob)
    try:
        if raw.startswith(_PICKLE_PROTO):
            raise ValueError("it starts like a pickle")
        document = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        if _is_pickle(raw):
            raise PickledStateError(
                f"{source} is a pickle, the old format; pickles are never loaded (they can run code)"
            ) from None
        raise StoredStateError(f"{source} is not a JSON document ({error})") from None
    return from_document(document, schema, version, source)


def _is_pickle(raw: bytes) -> bool:
    """Whether ``raw`` parses as pickle opcodes up to STOP (parsing only: nothing is looked up or called)."""
    try:
        for _ in pickletools.genops(raw):
            pass
    except Exception:  # noqa: BLE001 - any parse failure means "not a pickle"
        return False
    return True


def _refuse_constant(name: str) -> None:
    raise ValueError(f"JSON constant {name} (non-finite floats are stored tagged)")


# --------------------------------------------------------------------------------------------------- encode


def encode(value: Any, where: str = "data") -> Any:
    """``value`` as JSON-ready data (see the module docstring for what can be stored).

    :param where: the place of ``value`` in the whole, for errors
    :raises StoredStateError: a value of a type that cannot be stored
    """
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {TAG: "float", "value": repr(value)}
    if kind is list:
        return [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if kind is tuple:
        return {TAG: "tuple", "items": [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]}
    if kind is dict:
        if all(type(key) is str for key in value) and TAG not in value:
            return {key: encode(item, f"{where}.{key}") for key, item in value.items()}
        return {
            TAG: "dict",
            "items": [[encode(k, f"{where} key"), encode(v, f"{where}[{k!r}]")] for k, v in value.items()],
        }
    if isinstance(value, np.ndarray | np.generic):
        return {TAG: "ndarray" if kind is np.ndarray else "scalar", "npy": _npy(np.asarray(value), where)}
    if kind is pd.Timestamp:
        return _encode_timestamp(value, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_dataclass(value, where)
    raise StoredStateError(f"{where}: a {kind.__module__}.{kind.__qualname__} cannot be stored")


def _npy(array: np.ndarray, where: str) -> str:
    if array.dtype.hasobject:
        raise StoredStateError(f"{where}: arrays of Python objects cannot be stored")
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _encode_timestamp(value: pd.Timestamp, where: str) -> dict[str, Any]:
    if value.tz is None:
        return {TAG: "timestamp", "ns": value.value, "tz": None}
    zone = str(value.tz)
    try:
        # The name must come back as the same zone, or the stored timestamp would not.
        same = pd.Timestamp(value.value, tz="UTC").tz_convert(zone) == value
    except (ValueError, TypeError, KeyError):
        same = False
    if not same:
        raise StoredStateError(f"{where}: time zone {zone!r} of {value} has no name to store it by")
    return {TAG: "timestamp", "ns": value.value, "tz": zone}


def _encode_dataclass(value: Any, where: str) -> dict[str, Any]:
    name = type(value).__name__
    if _STORED.get(name) is not type(value):
        raise StoredStateError(f"{where}: {type(value).__qualname__} is not a registered stored dataclass")
    fields = {
        f.name: encode(getattr(value, f.name), f"{where}.{f.name}")
        for f in dataclasses.fields(value)
        if f.init
    }
    return {TAG: "dataclass", "type": name, "fields": fields}


# --------------------------------------------------------------------------------------------------- decode


def decode(data: Any, where: str = "data") -> Any:
    """The value :func:`encode` made ``data`` from.

    :param where: the place of ``data`` in the whole, for errors
    :raises StoredStateError: anything that :func:`encode` does not write
    """
    kind = type(data)
    if data is None or kind in (bool, int, str, float):
        return data
    if kind is list:
        return [decode(item, f"{where}[{i}]") for i, item in enumerate(data)]
    if kind is not dict:
        raise StoredStateError(f"{where}: a {kind.__name__} is not JSON data")
    if TAG not in data:
        return {key: decode(item, f"{where}.{key}") for key, item in data.items()}
    tag = data[TAG]
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        raise StoredStateError(f"{where}: unknown tag {tag!r}")
    keys, read = decoder
    if set(data) != {TAG, *keys}:
        raise StoredStateError(
            f"{where}: a {tag} needs the keys {sorted(keys)}, got {sorted(set(data) - {TAG})}"
        )
    return read(data, where)


def _decode_float(data: dict, where: str) -> float:
    if data["value"] not in ("nan", "inf", "-inf"):
        raise StoredStateError(f"{where}: {data['value']!r} is not a non-finite float")
    return float(data["value"])


def _decode_tuple(data: dict, where: str) -> tuple:
    return tuple(_decode_list(data["items"], where))


def _decode_dict(data: dict, where: str) -> dict:
    pairs = _decode_list(data["items"], where)
    if not all(type(pair) is list and len(pair) == 2 for pair in pairs):
        raise StoredStateError(f"{where}: dict items must be [key, value] pairs")
    try:
        return dict(pairs)
    except TypeError:
        raise StoredStateError(f"{where}: a dict key is not hashable") from None


def _decode_list(items: Any, where: str) -> list:
    if type(items) is not list:
        raise StoredStateError(f"{where}: items must be a list, got {type(items).__name__}")
    return decode(items, where)


def _decode_npy(data: dict, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(data["npy"], validate=True)
        # The .npy reader itself (never np.load, which also opens zip archives), with pickles refused.
        array = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
    except (TypeError, ValueError, binascii.Error, EOFError, OSError) as error:
        raise StoredStateError(f"{where}: corrupt array ({error})") from None
    if array.dtype.hasobject:
        raise StoredStateError(f"{where}: arrays of Python objects are refused")
    return array


def _decode_ndarray(data: dict, where: str) -> np.ndarray:
    return _decode_npy(data, where)


def _decode_scalar(data: dict, where: str) -> np.generic:
    array = _decode_npy(data, where)
    if array.shape != ():
        raise StoredStateError(f"{where}: a scalar must have shape (), got {array.shape}")
    return array[()]


def _decode_timestamp(data: dict, where: str) -> pd.Timestamp:
    ns, zone = data["ns"], data["tz"]
    if type(ns) is not int or (zone is not None and type(zone) is not str):
        raise StoredStateError(f"{where}: a timestamp needs integer ns and a time zone name or null")
    try:
        stamp = pd.Timestamp(ns, unit="ns")
        return stamp if zone is None else stamp.tz_localize("UTC").tz_convert(zone)
    except (ValueError, TypeError, OverflowError, KeyError) as error:
        raise StoredStateError(f"{where}: invalid timestamp ({error})") from None


def _decode_dataclass(data: dict, where: str) -> Any:
    name, fields = data["type"], data["fields"]
    cls = _STORED.get(name) if isinstance(name, str) else None
    if cls is None:
        raise StoredStateError(f"{where}: {name!r} is not a registered stored dataclass")
    if type(fields) is not dict:
        raise StoredStateError(f"{where}: the fields of a {name} must be an object")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise StoredStateError(f"{where}: {name} has no fields {unknown}")
    hints = _type_hints(cls)
    values = {}
    for field, item in fields.items():
        value = decode(item, f"{where}.{field}")
        if field in hints and not _conforms(value, hints[field]):
            raise StoredStateError(f"{where}.{field}: {value!r} is not a {_hint_name(hints[field])}")
        values[field] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise StoredStateError(f"{where}: invalid {name} ({error})") from None


_DECODERS: dict[str, tuple[frozenset[str], Any]] = {
    "float": (frozenset({"value"}), _decode_float),
    "tuple": (frozenset({"items"}), _decode_tuple),
    "dict": (frozenset({"items"}), _decode_dict),
    "ndarray": (frozenset({"npy"}), _decode_ndarray),
    "scalar": (frozenset({"npy"}), _decode_scalar),
    "timestamp": (frozenset({"ns", "tz"}), _decode_timestamp),
    "dataclass": (frozenset({"type", "fields"}), _decode_dataclass),
}


# ---------------------------------------------------------------------------------------- allow-list types


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (the hint forms the allow-listed dataclasses use; others pass)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin is Literal:
        return any(type(value) is type(arg) and value == arg for arg in args)
    if hint is type(None):
        return value is None
    # Numpy numbers of the hinted kind are stored as tagged scalars and come back as such.
    if hint is float:
        return type(value) in (float, int) or isinstance(value, np.floating | np.integer)
    if hint is int:
        return type(value) is int or isinstance(value, np.integer)
    if hint is bool:
        return type(value) is bool or isinstance(value, np.bool_)
    if hint is str:
        return type(value) is str
    if origin is tuple:
        if type(value) is not tuple:
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(item, args[0]) for item in value)
        return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict:
        return type(value) is dict and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if origin is list:
        return type(value) is list and all(_conforms(item, args[0]) for item in value)
    if isinstance(hint, type):
        if getattr(hint, "_is_protocol", False) and not getattr(hint, "_is_runtime_protocol", False):
            return True
        return isinstance(value, hint)
    return True


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
