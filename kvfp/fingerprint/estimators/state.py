"""Fitted state as arrays plus JSON: what :mod:`kvfp.fingerprint.persist` writes and reads.

Each estimator of this package names its fitted attributes in three lists: ``_state_arrays``
(numpy arrays), ``_state_array_dicts`` (``{key: array}``), ``_state_json`` (labels, head lists,
numbers) and ``_state_children`` (fitted sub-estimators). :func:`get_state` flattens an estimator
into ``{path: array}`` and a JSON-ready dict; :func:`set_state` rebuilds it, creating classes only
through the explicit ``types`` mapping it is given: a name read from a file is looked up, never
imported or evaluated.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils.validation import check_is_fitted

_NUMERIC_KINDS = "biuf"


def encode(value):
    """A fitted attribute as JSON: arrays of labels keep their dtype so they come back equal."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in _NUMERIC_KINDS:
            return {"__array__": value.tolist(), "dtype": value.dtype.str}
        if value.dtype.kind in "UO":
            items = value.tolist()
            if not all(isinstance(v, str) for v in np.ravel(np.asarray(items, dtype=object))):
                raise TypeError("only string or numeric label arrays can be saved")
            return {"__array__": items, "dtype": "object" if value.dtype.kind == "O" else "str"}
        raise TypeError(f"cannot save an array of dtype {value.dtype}")
    if isinstance(value, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"__list__": [encode(v) for v in value], "tuple": isinstance(value, tuple)}
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (str, bool, numbers.Integral, numbers.Real)):
        return value
    raise TypeError(f"cannot save a value of type {type(value).__name__}")


def decode(obj):
    if isinstance(obj, dict):
        if "__array__" in obj:
            dt = obj["dtype"]
            if dt == "str":
                return np.array(obj["__array__"], dtype=str)
            if dt == "object":
                return np.array(obj["__array__"], dtype=object)
            dtype = np.dtype(dt)
            if dtype.kind not in _NUMERIC_KINDS:
                raise ValueError(f"unexpected array dtype {dt!r} in a saved estimator")
            return np.array(obj["__array__"], dtype=dtype)
        if "__dict__" in obj:
            return {_hashable(decode(k)): decode(v) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [decode(v) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
        raise ValueError("unexpected object in a saved estimator")
    return obj


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


def get_state(est, prefix: str = "") -> tuple[dict[str, np.ndarray], dict]:
    """``({path: array}, meta)`` of a fitted estimator of this package."""
    check_is_fitted(est)
    arrays: dict[str, np.ndarray] = {}
    meta = {"type": type(est).__name__, "params": encode(est.get_params(deep=False)), "arrays": [], "array_dicts": {},
            "json": {}, "children": {}}
    for name in est._state_arrays:
        arrays[prefix + name] = np.ascontiguousarray(getattr(est, name))
        meta["arrays"].append(name)
    for name in est._state_array_dicts:
        keys = list(getattr(est, name))
        meta["array_dicts"][name] = keys
        for i, k in enumerate(keys):
            arrays[f"{prefix}{name}/{i}"] = np.ascontiguousarray(getattr(est, name)[k])
    for name in est._state_json:
        if hasattr(est, name):
            meta["json"][name] = encode(getattr(est, name))
    for name in est._state_children:
        child = getattr(est, name)
        if child is None:
            meta["children"][name] = None
        else:
            a, m = get_state(child, f"{prefix}{name}/")
            arrays.update(a)
            meta["children"][name] = m
    return arrays, meta


def set_state(meta: dict, arrays: dict[str, np.ndarray], types: dict[str, type], prefix: str = ""):
    """Rebuild an estimator from :func:`get_state`'s output; ``types`` maps type names to classes."""
    cls = types.get(meta.get("type"))
    if cls is None:
        raise ValueError(f"unknown estimator type {meta.get('type')!r} (known: {', '.join(sorted(types))})")
    params = decode(meta["params"])
    est = cls(**params)
    for name in meta["arrays"]:
        if name not in cls._state_arrays:
            raise ValueError(f"{cls.__name__} has no saved array {name!r}")
        setattr(est, name, arrays[prefix + name])
    for name, keys in meta["array_dicts"].items():
        if name not in cls._state_array_dicts:
            raise ValueError(f"{cls.__name__} has no saved array table {name!r}")
        setattr(est, name, {k: arrays[f"{prefix}{name}/{i}"] for i, k in enumerate(keys)})
    for name, value in meta["json"].items():
        if name not in cls._state_json:
            raise ValueError(f"{cls.__name__} has no saved attribute {name!r}")
        setattr(est, name, decode(value))
    for name, child in meta["children"].items():
        if name not in cls._state_children:
            raise ValueError(f"{cls.__name__} has no saved part {name!r}")
        setattr(est, name, None if child is None else set_state(child, arrays, types, f"{prefix}{name}/"))
    return est
