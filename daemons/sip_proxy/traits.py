"""mypyc's ``trait`` mark for the proxy core's mix-ins (``RegistrarFront``,
``HopByHop``): a compiled class has one base class, the rest traits.

``mypy_extensions`` comes with mypy, which only the build needs; without it
the mark does nothing at run time, as it does with it.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["trait"]

_C = TypeVar("_C")

try:
    from mypy_extensions import trait
except ImportError:  # installed with mypy, for the build; not needed to run
    def trait(cls: _C) -> _C:
        """Nothing at run time."""
        return cls
