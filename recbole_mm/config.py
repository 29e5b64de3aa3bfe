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

import contextlib
import os
import re
import sys

from recbole.config import Config

from recbole_mm import registry

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_NAME = "mm_sample"

# The evaluation protocol: metrics, cut-offs, model selection (validation metric, evaluation
# frequency, early-stopping patience) and history masking at ranking. One place for the list.
PROTOCOL_KEYS = ("metrics", "topk", "valid_metric", "eval_step", "stopping_step",
                 "mask_history_items")
PROTOCOLS = ("plugin", "paper")


class ConfigError(ValueError):
    """A configuration value that cannot be used (the message names the key and the file)."""


@contextlib.contextmanager
def plain_argv():
    """RecBole's ``Config`` reads ``--key=value`` from ``sys.argv``: a tool that builds its
    configuration itself (benchmark cells, tuner, recommend, speed and cost) hides its own
    options from it while this is entered."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


def read_yaml(path: str) -> dict:
    """A yaml file's mapping ({} when empty); a clear error naming the file otherwise."""
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}.")
    return data


def model_yaml_path(model_name: str) -> str:
    return os.path.join(registry.properties_dir(), "model", f"{model_name}.yaml")


def check_model_protocol(model_name: str) -> dict:
    """The ``paper_protocol`` of ``properties/model/<M>.yaml`` ({} when none); refuses a model
    yaml that sets a protocol key at top level or a paper protocol with other keys."""
    path = model_yaml_path(model_name)
    if not os.path.isfile(path):
        return {}
    data = read_yaml(path)
    top = [k for k in PROTOCOL_KEYS if k in data]
    if top:
        raise ConfigError(
            f"{path} sets the evaluation-protocol key(s) {', '.join(top)} at top level; a model "
            f"is evaluated under the plugin-wide protocol (properties/overall.yaml). Move its "
            f"paper's values under 'paper_protocol:' (applied with protocol: paper).")
    return _check_paper_protocol(data.get("paper_protocol"), path)


def _check_paper_protocol(paper, where: str) -> dict:
    if paper is None:
        return {}
    if not isinstance(paper, dict):
        raise ConfigError(f"{where}: paper_protocol must be a mapping of protocol keys, got "
                          f"{paper!r}.")
    extra = sorted(set(paper) - set(PROTOCOL_KEYS))
    if extra:
        raise ConfigError(f"{where}: paper_protocol may set only {', '.join(PROTOCOL_KEYS)}; "
                          f"got {', '.join(extra)} (training settings belong at top level).")
    return dict(paper)


def models_with_paper_protocol() -> list[str]:
    folder = os.path.join(registry.properties_dir(), "model")
    return sorted(f[:-5] for f in os.listdir(folder)
                  if f.endswith(".yaml") and read_yaml(os.path.join(folder, f)).get("paper_protocol"))


def split_epochs(config, stage_keys, owner: str) -> list[int]:
    """Epoch budgets of the stages of one run; ``epochs`` is the run's total.

    ``stage_keys`` name each stage's own key (e.g. ``['phase1_epochs', 'phase2_epochs']``). A
    stage whose key is set trains that many epochs; the stages left at ``~`` share what remains
    of ``epochs``, equally, the later stages taking the remainder (``epochs: 5`` over two stages
    = 2 + 3). When every key is set they are the schedule (a paper's own, e.g. 300 + 300) and
    ``epochs`` is not used (logged). No keys = a single-stage run: ``[epochs]``. Each budget is
    an upper bound: early stopping may end a stage sooner.
    """
    total = config["epochs"]
    if not isinstance(total, int) or isinstance(total, bool) or total < 1:
        raise ConfigError(f"{owner}: epochs must be a positive integer (the run's total), got {total!r}.")
    if not stage_keys:
        return [total]
    fixed = {}
    for key in stage_keys:
        value = config[key]
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{owner}: {key} must be a positive integer or ~ (a share of "
                              f"epochs), got {value!r}.")
        fixed[key] = value
    free = [k for k in stage_keys if k not in fixed]
    if not free:
        if sum(fixed.values()) != total:
            from logging import getLogger

            getLogger().info(f"{owner}: {' + '.join(f'{k} ({v})' for k, v in fixed.items())} "
                             f"= {sum(fixed.values())} epochs set per stage; epochs ({total}) "
                             f"is not used.")
        return [fixed[k] for k in stage_keys]
    rest = total - sum(fixed.values())
    share, extra = divmod(rest, len(free))
    if share < 1:
        left = f"; {', '.join(fixed)} leave {rest}" if fixed else ""
        raise ConfigError(f"{owner}: epochs = {total} is the total over {', '.join(stage_keys)}"
                          f"{left}, too few for at least 1 epoch each of {', '.join(free)}. "
                          f"Raise epochs or set the per-stage keys.")
    budget = {k: share + (1 if i >= len(free) - extra else 0) for i, k in enumerate(free)}
    budget.update(fixed)
    return [budget[k] for k in stage_keys]


def stage_epochs_line(stage_epochs: dict, epochs) -> str:
    """``{"phase 1": {"budget": 2, "run": 2}, ...}`` -> ``'phase 1 2/2, phase 2 1/2: 3 epochs
    (epochs = 4)'``: epochs run / budget per stage, the total run and the run's ``epochs``."""
    parts = ", ".join(f"{name} {s['run']}/{s['budget']}" for name, s in stage_epochs.items())
    total = sum(s["run"] for s in stage_epochs.values())
    return f"{parts}: {total} epochs (epochs = {epochs})"


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


def check_valid_metric(cfg: dict) -> None:
    """``valid_metric`` must be one of the computed metrics at one of the computed cut-offs;
    RecBole would fail only after the first training epoch, with a bare ``KeyError``."""
    vm, metrics, topk = cfg.get("valid_metric"), cfg.get("metrics"), cfg.get("topk")
    if not vm or not metrics:
        return
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    base, _, k = str(vm).partition("@")
    if base.lower() not in {str(m).lower() for m in metrics}:
        raise ConfigError(f"valid_metric: {vm} is not computed: metrics are {metrics} (add "
                          f"{base} to metrics or pick one of them, e.g. {metrics[0]}@<k>; "
                          f"Hit@k and Recall@k are equal with one target per user).")
    cutoffs = [topk] if isinstance(topk, int) else list(topk or [])
    if k and cutoffs and k.isdigit() and int(k) not in cutoffs:
        raise ConfigError(f"valid_metric: {vm} uses cut-off {k}, but topk is {cutoffs}.")


class MMConfig(Config):
    """RecBole ``Config`` for plugin and built-in models on plugin datasets."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        model_class = registry.get_model(model) if isinstance(model, str) else model
        if dataset is None:
            raise registry.UnknownNameError(
                f"No dataset given. Known datasets: {', '.join(registry.known_datasets())}."
            )
        plugin_files = plugin_config_files(model_class.__name__, dataset)
        self._mm_model_name = model_class.__name__
        check_model_protocol(model_class.__name__)
        self._n_plugin_files = len(plugin_files)
        files = plugin_files + list(config_file_list or [])
        super().__init__(model=model_class, dataset=dataset, config_file_list=files,
                         config_dict=config_dict)

    def _load_config_files(self, file_list):
        file_list = list(file_list or [])
        n = getattr(self, "_n_plugin_files", 0)
        self._user_file_config = super()._load_config_files(file_list[n:])
        return {**super()._load_config_files(file_list[:n]), **self._user_file_config}

    def _merge_external_config_dict(self):
        """RecBole's merge, after applying the protocol: with ``protocol: paper`` the
        ``paper_protocol`` values replace the property files' protocol keys (the user's files,
        dict and command line still win). They are written into the file layer, so a checkpoint's
        saved configuration reloads under the same protocol."""
        ext = {**self.file_config_dict, **self.variable_config_dict, **self.cmd_config_dict}
        protocol = ext.get("protocol") or "plugin"
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r} "
                              f"(plugin = properties/overall.yaml for every model; paper = the "
                              f"model's paper_protocol).")
        if protocol == "paper":
            model = getattr(self, "_mm_model_name", "the model")
            paper = _check_paper_protocol(ext.get("paper_protocol"), "paper_protocol")
            if not paper:
                raise ConfigError(
                    f"protocol: paper, but {model} has no paper protocol (no paper_protocol "
                    f"mapping in properties/model/{model}.yaml or the configuration). Models "
                    f"with one: {', '.join(models_with_paper_protocol()) or 'none'}.")
            user = set(self._user_file_config) | set(self.variable_config_dict) | set(self.cmd_config_dict)
            for key, value in paper.items():
                if key not in user:
                    self.file_config_dict[key] = value
        self.file_config_dict["protocol"] = protocol
        super()._merge_external_config_dict()

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
        check_valid_metric(self.final_config_dict)

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
        value = yaml.safe_load(v)
    except Exception:
        return v
    # YAML 1.1 reads '1e-4' (no dot in the mantissa) as a string; RecBole's own loader reads a float
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def parse_overrides(args) -> dict:
    """``['--key=value', ...]`` -> ``{key: value}`` (RecBole-style command-line overrides)."""
    out = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"error: expected --key=value, got {arg!r}")
        k, v = arg[2:].split("=", 1)
        out[k] = parse_cli_value(v)
    return out
