"""``MMConfig``: RecBole's ``Config`` with the plugin's property files layered in.

Precedence, lowest first (DESIGN.md): RecBole defaults < ``properties/overall.yaml`` <
``properties/model/<M>.yaml`` < ``properties/dataset/<D>.yaml`` < ``config_file_list`` <
``config_dict`` < ``--key=value`` on the command line.

Data location: a dataset lives in the folder ``<root>/<dataset_dir>`` (``dataset_dir`` defaults to
the dataset name) and its files start with ``file_prefix`` (default: the dataset name). Roots are
searched in order: ``data_path`` when the user sets it, else ``$RECBOLE_MM_DATA`` (``:``-separated),
``./dataset``, ``<project>/dataset`` and ``<project>/../shared/data``. ``config['data_path']`` is
the resolved folder, as RecBole expects.

MMRec folders: a dataset yaml may name its MMRec folder (``mmrec_dir: baby``). The first root
holding ``<root>/<mmrec_dir>`` (with MMRec's ``i_id_mapping.csv`` or ``<mmrec_dir>.inter``) is
``config['mmrec_path']``: feature files missing from the dataset folder are looked up there under
their MMRec names, and when no root has ``<dataset_dir>`` the MMRec folder is the dataset folder.
"""
from __future__ import annotations

import os

from recbole.config import Config

from recbole_mm import registry

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_NAME = "mm_sample"


def plugin_config_files(model_name: str, dataset: str) -> list[str]:
    props = registry.properties_dir()
    files = [os.path.join(props, "overall.yaml")]
    for sub, name in (("model", model_name), ("dataset", dataset)):
        path = os.path.join(props, sub, f"{name}.yaml")
        if os.path.isfile(path):
            files.append(path)
    return files


def data_roots(user_root: str | None = None) -> list[str]:
    if user_root:
        return [user_root]
    roots = [r for r in os.environ.get("RECBOLE_MM_DATA", "").split(os.pathsep) if r]
    roots += [os.path.join(os.getcwd(), "dataset"), os.path.join(PROJECT_DIR, "dataset"),
              os.path.join(os.path.dirname(PROJECT_DIR), "shared", "data")]
    seen, out = set(), []
    for r in roots:
        r = os.path.abspath(r)
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def resolve_data_folder(dataset: str, dataset_dir: str | None, user_root: str | None) -> str:
    """The folder holding the dataset's files (the first root that has it)."""
    sub = dataset_dir or dataset
    if os.path.isabs(sub):
        return sub
    roots = data_roots(user_root)
    for root in roots:
        if os.path.isdir(os.path.join(root, sub)):
            return os.path.join(root, sub)
    if dataset == SAMPLE_NAME:  # the project's own demo data is generated on first use
        from recbole_mm.data.sample import ensure_sample

        return ensure_sample(os.path.join(user_root or os.path.join(PROJECT_DIR, "dataset"), sub))
    return os.path.join(roots[0], sub)


def find_mmrec_folder(mmrec_dir: str | None, user_root: str | None) -> str | None:
    """``<root>/<mmrec_dir>`` of the first data root holding an MMRec folder, else None."""
    from recbole_mm.data.features import MMREC_ITEM_MAP

    if not mmrec_dir:
        return None
    name = os.path.basename(os.path.normpath(mmrec_dir))
    candidates = ([mmrec_dir] if os.path.isabs(mmrec_dir)
                  else [os.path.join(root, mmrec_dir) for root in data_roots(user_root)])
    for folder in candidates:
        if (os.path.isfile(os.path.join(folder, MMREC_ITEM_MAP))
                or os.path.isfile(os.path.join(folder, f"{name}.inter"))):
            return folder
    return None


class MMConfig(Config):
    """RecBole ``Config`` for plugin and built-in models on plugin datasets."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        model_class = registry.get_model(model) if isinstance(model, str) else model
        if dataset is None:
            raise registry.UnknownNameError(
                f"No dataset given. Known datasets: {', '.join(registry.known_datasets())}."
            )
        files = plugin_config_files(model_class.__name__, dataset) + list(config_file_list or [])
        super().__init__(model=model_class, dataset=dataset, config_file_list=files,
                         config_dict=config_dict)

    def _set_default_parameters(self):
        user_root = self.external_config_dict.get("data_path")
        super()._set_default_parameters()
        folder = resolve_data_folder(self.dataset, self.final_config_dict.get("dataset_dir"),
                                     user_root)
        mmrec = find_mmrec_folder(self.final_config_dict.get("mmrec_dir"), user_root)
        if not os.path.isdir(folder) and mmrec:
            folder = mmrec  # only the MMRec folder is there: its <name>.inter is the split
        self.final_config_dict["mmrec_path"] = mmrec
        if not os.path.isdir(folder) and self.dataset not in registry.known_datasets():
            raise registry.UnknownNameError(
                f"Unknown dataset '{self.dataset}': no folder '{os.path.basename(folder)}' under "
                f"{', '.join(data_roots(user_root))} and no properties/dataset/{self.dataset}.yaml. "
                f"Known datasets: {', '.join(registry.known_datasets())}."
            )
        self.final_config_dict["data_path"] = folder

    def _init_device(self):
        """RecBole's device set-up, plus distributed data parallel on the CPU (gloo) when no GPU
        is used; RecBole itself only knows NCCL on CUDA."""
        import torch

        cfg = self.final_config_dict
        use_cuda = torch.cuda.is_available() and str(cfg.get("gpu_id", "")) != ""
        if "local_rank" not in cfg or use_cuda:
            return super()._init_device()
        cfg["gpu_id"] = str(cfg.get("gpu_id", ""))
        torch.distributed.init_process_group(
            backend="gloo",
            rank=cfg["local_rank"] + cfg.get("offset", 0),
            world_size=cfg["world_size"],
            init_method=f"tcp://{cfg['ip']}:{cfg['port']}",
        )
        cfg["device"] = torch.device("cpu")
        cfg["single_spec"] = False
        if cfg["local_rank"] != 0:
            cfg["state"] = "error"
            cfg["show_progress"] = False
            cfg["verbose"] = False


def parse_cli_value(v: str):
    """A command-line value as YAML (``1e-3``, ``[a, b]``, ``true``); the raw string if not YAML."""
    import yaml

    try:
        return yaml.safe_load(v)
    except Exception:
        return v


def parse_overrides(args) -> dict:
    """``['--key=value', ...]`` -> ``{key: value}`` (RecBole-style command-line overrides)."""
    out = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"error: expected --key=value, got {arg!r}")
        k, v = arg[2:].split("=", 1)
        out[k] = parse_cli_value(v)
    return out
