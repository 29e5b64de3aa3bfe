"""Command line entry point, like RecBole's run_recbole.py.

    python run_recbole_mm.py --model=SGP4SR --dataset=baby [--config_files="a.yaml b.yaml"] [--key=value ...]

``--model`` may be a plugin model or any RecBole built-in (plugin zoo first); every other
``--key=value`` overrides the configuration (highest precedence), as in RecBole.
"""
import argparse
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", default="SASRec", help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", default="mm_sample", help="dataset name (properties/dataset/<name>.yaml)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
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

    files = args.config_files.strip().split(" ") if args.config_files else None
    try:
        run_recbole_mm(model=args.model, dataset=args.dataset, config_file_list=files,
                       nproc=args.nproc, world_size=args.world_size, ip=args.ip,
                       port=args.port, group_offset=args.group_offset)
    except (UnknownNameError, FeatureFileError, DatasetFilesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
