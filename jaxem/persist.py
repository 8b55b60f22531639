"""Safe persistence: fitted estimators and functional results as ``.npz`` files.

The format (version 1) is a NumPy ``.npz`` archive holding plain numeric arrays and one
string entry ``__jaxem__``, a JSON document::

    {"format": "jaxem", "version": 1, "jaxem": "<version that wrote it>",
     "object": <node>}

A *node* is JSON ``null``/bool/number/string, or an object with a ``"$"`` tag:
``{"$": "array", "key": k}`` (the archive's entry ``k``), ``{"$": "list", "items": [...]}``,
``{"$": "tuple", ...}``, ``{"$": "dict", "items": {...}}``, ``{"$": "prng_key",
"impl": ..., "key": k}``, or ``{"$": "object", "type": name, "fields": {...}}`` for a
class registered with :func:`register` (estimators, parameter tuples, results).
Loading never unpickles (``allow_pickle=False``) and only rebuilds registered classes
from their fields, so a file cannot run code; anything else raises ``ValueError``.
"""
from __future__ import annotations

import collections
import importlib
import json
import pkgutil
import zipfile

import jax
import numpy as np

import jaxem.families

FORMAT, VERSION = "jaxem", 1
_META = "__jaxem__"
_TYPES: dict[str, type] = {}  # the names a file may use -> the classes they rebuild
_NAMES: dict[type, str] = {}


def register(cls: type, name: str | None = None) -> type:
    """Allow instances of ``cls`` (a NamedTuple, dataclass, estimator or plain class)
    in saved files under ``name`` (default: the class name; a stable part of the
    format, so a class can move between modules)."""
    name = name or cls.__name__
    _TYPES[name], _NAMES[cls] = cls, name
    return cls


class Saveable:
    """Mixin of the estimators: ``est.save(path)``, read back by :func:`jaxem.load`.
    Subclasses are registered under their class name."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register(cls)

    def save(self, path) -> None:
        """Write this estimator (parameters and fitted state) to ``path`` as ``.npz``;
        no pickle: :func:`jaxem.load` reads it back without running code."""
        save(self, path)


def save(obj, path) -> None:
    """Write ``obj`` (a fitted estimator, a :class:`jaxem.FitResult`, parameters …)
    to ``path`` in the format above. Device arrays are copied to the host."""
    arrays: dict[str, np.ndarray] = {}
    from jaxem import __version__
    meta = {"format": FORMAT, "version": VERSION, "jaxem": __version__,
            "object": _encode(obj, arrays)}
    arrays[_META] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load(path):
    """Read what :func:`save` wrote. Raises ``ValueError`` naming the problem for a
    truncated, corrupted, foreign, pickle or newer-version file."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:1] == b"\x80" or magic[:1] in (b"(", b"]", b"}"):
        raise ValueError(f"{path} holds pickled data, which jaxem never loads (it could run "
                         f"code): save models with est.save(path).")
    if magic != b"PK\x03\x04":
        raise ValueError(f"{path} is not a jaxem file (not an .npz archive).")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if _META not in archive.files:
                raise ValueError(f"{path} is an .npz archive but not a jaxem file "
                                 f"(no {_META} entry).")
            meta = json.loads(str(archive[_META]))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a jaxem file (format {meta.get('format')!r}).")
            if meta.get("version") != VERSION:
                raise ValueError(f"{path} has jaxem format version {meta.get('version')!r}; "
                                 f"this jaxem reads version {VERSION}: upgrade jaxem.")
            return _decode(meta["object"], archive)
    except ValueError as err:
        if "pickle" in str(err):
            raise ValueError(f"{path} holds pickled data, which jaxem never loads (it could "
                             f"run code): save models with est.save(path).") from None
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path} is not a readable jaxem file: {err}") from None
    except (zipfile.BadZipFile, EOFError, KeyError, TypeError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a readable jaxem file (truncated or corrupted?): "
                         f"{type(err).__name__}: {err}") from None


def _encode(v, arrays):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, np.ndarray):
        return v.item() if isinstance(v, np.generic) else v
    if isinstance(v, jax.Array) and jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
        return {"$": "prng_key", "impl": str(jax.random.key_impl(v)),
                "key": _put(np.asarray(jax.random.key_data(v)), arrays)}
    if isinstance(v, (np.ndarray, jax.Array, np.generic)):
        a = np.asarray(v)
        if a.dtype.kind not in "biufcU":
            raise TypeError(f"cannot save an array of dtype {a.dtype}")
        return {"$": "array", "key": _put(a, arrays)}
    name = _NAMES.get(type(v))
    if name is not None:
        if hasattr(v, "_fields"):  # NamedTuple
            fields = dict(zip(v._fields, v))
        elif hasattr(v, "get_params"):  # estimator: its parameters and fitted state
            fields = dict(vars(v))
        elif hasattr(v, "__dataclass_fields__"):
            fields = {f: getattr(v, f) for f in v.__dataclass_fields__}
        else:
            fields = dict(vars(v))
        return {"$": "object", "type": name,
                "fields": {k: _encode(f, arrays) for k, f in fields.items()}}
    if isinstance(v, (list, tuple, collections.deque)):
        tag = {list: "list", tuple: "tuple", collections.deque: "deque"}.get(type(v))
        if tag is None:
            raise TypeError(f"cannot save a {type(v).__name__}: register it with "
                            "jaxem.persist.register")
        return {"$": tag, "items": [_encode(i, arrays) for i in v],
                **({"maxlen": v.maxlen} if tag == "deque" else {})}
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"$": "dict", "items": {k: _encode(i, arrays) for k, i in v.items()}}
    raise TypeError(f"cannot save a {type(v).__name__}: register it with "
                    "jaxem.persist.register")


def _put(a: np.ndarray, arrays: dict) -> str:
    key = f"a{len(arrays)}"
    arrays[key] = a
    return key


def _decode(node, archive):
    if not isinstance(node, dict):
        if isinstance(node, list):
            raise ValueError("malformed node (a bare list)")
        return node
    tag = node.get("$")
    if tag == "array":
        return archive[node["key"]]
    if tag == "prng_key":
        return jax.random.wrap_key_data(archive[node["key"]], impl=node["impl"])
    if tag in ("list", "tuple", "deque"):
        items = [_decode(i, archive) for i in node["items"]]
        if tag == "deque":
            return collections.deque(items, maxlen=node.get("maxlen"))
        return items if tag == "list" else tuple(items)
    if tag == "dict":
        return {k: _decode(i, archive) for k, i in node["items"].items()}
    if tag == "object":
        cls = _TYPES.get(node["type"])
        if cls is None:
            raise ValueError(f"unknown type {node['type']!r} (not one jaxem saves)")
        fields = {k: _decode(f, archive) for k, f in node["fields"].items()}
        if hasattr(cls, "_fields"):
            return cls(**fields)
        if hasattr(cls, "__dataclass_fields__"):
            return cls(**fields)
        obj = cls.__new__(cls)  # no __init__ or __setstate__: only the stored fields
        obj.__dict__.update(fields)
        return obj
    raise ValueError(f"malformed node with tag {tag!r}")


def _register_modules():
    """Register the parameter, statistic and result tuples and the family classes of
    the engine modules and of every module in :mod:`jaxem.families`, as
    ``"<module>.<class>"`` (e.g. ``"gaussian.GaussianParams"``, ``"kmeans.KMeans"``,
    ``"select.Selection"``, ``"trim.TrimmedParams"``)."""
    names = ["jaxem.batch", "jaxem.em", "jaxem.compare", "jaxem.hmm_inference",
             "jaxem.select", "jaxem.trim"] + [
        f"jaxem.families.{m.name}" for m in pkgutil.iter_modules(jaxem.families.__path__)]
    for name in names:
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if (isinstance(cls, type) and cls.__module__ == name
                    and (hasattr(cls, "_fields") or hasattr(cls, "__dataclass_fields__"))):
                register(cls, f"{name.rsplit('.', 1)[-1]}.{cls.__name__}")


_register_modules()
