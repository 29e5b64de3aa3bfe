"""recbole_mm: a RecBole plugin for multi-modal sequential recommendation."""
from recbole_mm import compat as _compat

_compat.apply()

__version__ = "0.1.0"

from recbole_mm.quick_start import load_data_and_model, run_recbole_mm  # noqa: E402
from recbole_mm.registry import register_model  # noqa: E402

__all__ = ["run_recbole_mm", "load_data_and_model", "register_model", "__version__"]
