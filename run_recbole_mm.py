"""Command line entry point, like RecBole's run_recbole.py.

    python run_recbole_mm.py --model=SGP4SR --dataset=baby [--config_files="a.yaml b.yaml"] [--key=value ...]
    python run_recbole_mm.py --resume=saved/SGP4SR-<time>.pth [--epochs=100 ...]

``--model`` may be a plugin model or any RecBole built-in (plugin zoo first); every other
``--key=value`` overrides the configuration (highest precedence), as in RecBole. ``--resume``
continues a stopped run from its last completed epoch with the checkpoint's model, dataset and
configuration (recbole_mm.resume).

Every model is evaluated under the plugin-wide protocol (properties/overall.yaml: metrics, top-k,
validation metric, evaluation frequency, patience, history masking), so that runs of different
models compare; ``--protocol=paper`` uses the model's paper protocol instead (``paper_protocol`` in
properties/model/<Model>.yaml, e.g. MMSR's Hit@10/20/50). ``--epochs`` is the run's total, over
the phases / steps of multi-stage models (DeCoRec, SICSRec).
"""
import argparse
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", default=None, help="model name (plugin or RecBole; default SASRec)")
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (properties/dataset/<name>.yaml; default mm_sample)")
    parser.add_argument("--resume", default=None, help="continue the stopped run of this checkpoint (saved/X.pth)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--protocol", default=None, choices=["plugin", "paper"],
                        help="evaluation protocol: plugin (default: properties/overall.yaml, the "
                             "same for every model) or paper (the model's paper_protocol)")
    parser.add_argument("--nproc", type=int, default=1, help="processes for distributed data parallel")
    parser.add_argument("--ip", default="localhost")
    parser.add_argument("--port", default="5678")
    parser.add_argument("--world_size", type=int, default=-1)
    parser.add_argument("--group_offset", type=int, default=0)
    args, _ = parser.parse_known_args(argv)

    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.registry import UnknownNameError
    from recbole_mm.data.features import FeatureFileError
    from recbole_mm.data.dataset import DatasetFilesError
    from recbole_mm.resume import ResumeError
    from recbole_mm.tracking import TrackingError
    from recbole_mm.config import ConfigError

    files = args.config_files.strip().split(" ") if args.config_files else None
    model, dataset = args.model, args.dataset
    if args.resume is None:
        model, dataset = model or "SASRec", dataset or "mm_sample"
    try:
        run_recbole_mm(model=model, dataset=dataset, config_file_list=files,
                       nproc=args.nproc, world_size=args.world_size, ip=args.ip,
                       port=args.port, group_offset=args.group_offset, resume=args.resume,
                       config_dict={"protocol": args.protocol} if args.protocol else None)
    except (UnknownNameError, FeatureFileError, DatasetFilesError, ResumeError,
            TrackingError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
