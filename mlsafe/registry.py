"""Registries as data: a decorator factory that files functions under a name, once."""

from __future__ import annotations

from collections.abc import Callable


def registrar(table: dict[str, Callable], what: str) -> Callable[[str], Callable[[Callable], Callable]]:
    """`register(name)` decorators that put a function into `table` under `name`; a second
    registration of a name raises ValueError naming `what` ("ablation", "preset", ...)."""
    def register(name: str):
        def deco(fn):
            if name in table:
                raise ValueError(f"{what} {name!r} is already registered")
            table[name] = fn
            return fn
        return deco
    return register
