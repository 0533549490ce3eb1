"""Static compatibility of annotated types, for wiring checks before anything runs."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

_UNIONS = (Union, types.UnionType)
_LISTS = (list, Sequence)


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def assignable(src: Any, dst: Any) -> bool:
    """Whether every value of type ``src`` is a valid value of type ``dst``."""
    src, dst = _strip(src), _strip(dst)
    if src is Any or dst is Any or src == dst:
        return True
    s_origin, d_origin = get_origin(src), get_origin(dst)
    if d_origin in _UNIONS:
        if s_origin in _UNIONS:
            return all(assignable(a, dst) for a in get_args(src))
        return any(assignable(src, a) for a in get_args(dst))
    if s_origin in _UNIONS:
        return all(assignable(a, dst) for a in get_args(src))
    if s_origin is Literal:
        if d_origin is Literal:
            allowed = {(type(v), v) for v in get_args(dst)}
            return all((type(v), v) in allowed for v in get_args(src))
        return all(assignable(type(v), dst) for v in get_args(src))
    if d_origin is Literal:
        return False
    if src is int and dst is float:
        return True
    if s_origin is None and d_origin is None:
        return isinstance(src, type) and isinstance(dst, type) and issubclass(src, dst)
    if d_origin is None and isinstance(dst, type) and isinstance(s_origin, type):
        return issubclass(s_origin, dst)  # list[int] -> list, dict[str, int] -> Mapping
    if s_origin is None or d_origin is None:
        bare_dst = dst if d_origin is None else d_origin
        bare_src = src if s_origin is None else s_origin
        return bare_dst in (list, dict, tuple, set) and bare_src is bare_dst and not get_args(src)
    if not (isinstance(s_origin, type) and isinstance(d_origin, type)):
        return False
    if not issubclass(s_origin, d_origin):
        return False
    s_args, d_args = get_args(src), get_args(dst)
    if not d_args:
        return True
    if len(s_args) != len(d_args):
        return False
    return all(assignable(s, d) for s, d in zip(s_args, d_args, strict=True))


def list_item(tp: Any) -> tuple[bool, Any]:
    """``(True, T)`` when ``tp`` is a list (or sequence) of ``T``; ``(False, None)`` otherwise."""
    tp = _strip(tp)
    origin = get_origin(tp)
    if tp in _LISTS:
        return True, Any
    if origin in _LISTS:
        args = get_args(tp)
        return True, args[0] if args else Any
    return False, None


def type_name(tp: Any) -> str:
    """A short readable name for an annotation."""
    tp = _strip(tp)
    if isinstance(tp, type) and get_origin(tp) is None and not get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "")
