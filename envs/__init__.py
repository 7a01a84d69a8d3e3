"""Jittable array-based environments: `envs.make(name, **options)`.

Every module in this package that defines an env registers it with
`envs.core.register`; importing the package imports them all.
"""

import importlib
import pkgutil

from envs.core import AutoReset, Env, State, make, register, registered

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("core", "text") and not _mod.name.startswith("_"):
        importlib.import_module(f"envs.{_mod.name}")

__all__ = ["AutoReset", "Env", "State", "make", "register", "registered"]
