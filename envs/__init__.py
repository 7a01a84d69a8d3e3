"""Jittable array-based environments: `jaxrl_lm.envs.make(name, **options)`.

The folder sits at the top of the repository and installs as `jaxrl_lm.envs`
(pyproject.toml maps it), so nothing generic lands in site-packages.

Every module in this package that defines an env registers it with
`envs.core.register`; importing the package imports them all.
"""

import importlib
import pkgutil

from jaxrl_lm.envs.core import AutoReset, Env, State, make, register, registered

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("core", "text") and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["AutoReset", "Env", "State", "make", "register", "registered"]
