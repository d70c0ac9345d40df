"""Package faces that import their TensorFlow submodules on first use (PEP 562 module ``__getattr__``).

``import tfssim.data`` (or ``export``, ``models``, ``training``) stays cheap and works without
TensorFlow: the TensorFlow-free names are imported at once by the package itself, every other
name and submodule here, on its first lookup.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Collection, Mapping

__all__ = ["lazy_names"]


def lazy_names(package: str, names: Mapping[str, str], submodules: Collection[str] = (), *,
               light: Collection[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package that imports ``names`` on first use.

    A value found is stored in the package's namespace, so later lookups are plain attribute
    reads and ``monkeypatch.setattr(package, name, ...)`` replaces what callers see. Before a
    module that is not ``light`` is imported, :mod:`tfssim._tensorflow` is: without TensorFlow
    the lookup fails with an ``ImportError`` naming the install command.

    Args:
        package: The package's ``__name__``.
        names: Each lazy name and the module (full name) that defines it.
        submodules: The package's submodules, reachable as attributes before anything imported them.
        light: Modules (full names) that import no TensorFlow.

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's top level.

    Example:
        >>> __getattr__, __dir__ = lazy_names(__name__, {"train": "tfssim.training.loop"}, ("loop",))
    """
    namespace = sys.modules[package].__dict__

    def load(module: str) -> Any:
        if module not in light:
            import tfssim._tensorflow  # noqa: F401 - first: the install command when TensorFlow is missing
        return importlib.import_module(module)

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return load(f"{package}.{name}")
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(load(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())) | set(names))

    return __getattr__, __dir__
