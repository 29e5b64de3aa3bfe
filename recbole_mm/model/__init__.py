"""The plugin's model zoo. Importing this package registers every model (see registry)."""
import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("layers",):
        importlib.import_module(f"{__name__}.{_mod.name}")
