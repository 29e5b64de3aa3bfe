"""Benchmark harness: a grid of models x datasets x seeds, tables, significance, plots and the
papers' numbers.

    python -m recbole_mm.benchmark --quick                       # 5 RecBole baselines on mm_sample
    python -m recbole_mm.benchmark --models=SASRec,SGP4SR --datasets=scientific_mm \\
        --seeds=2020,2021,2022 --profile=full --name=sci_full
    python -m recbole_mm.benchmark --models=SGP4SR,SASRecF --datasets=scientific_mm \\
        --noise=image:0,0.1,0.3,0.5 --name=sci_noise          # modality-mismatch robustness curve
    python -m recbole_mm.benchmark --report --name=sci_full    # tables/plots from finished cells

Every cell (one model, one dataset, one seed, one configuration) is trained and tested through
``recbole_mm.quick_start.run_recbole_mm`` under the same split, metrics and evaluation protocol
and written atomically to ``<out>/cells/<cell id>.json``; a finished cell is never rerun unless
``--force`` is given, and an unfinished one (timed out, failed, interrupted) resumes from its last
training state. Details: ``docs/BENCHMARKS.md``.

The parts, each readable on its own:

* :mod:`~recbole_mm.benchmark.grid`: profiles, ``--models`` / ``--noise`` parsing, cells and ids;
* :mod:`~recbole_mm.benchmark.probe`: trainer instrumentation (timings, curve, live progress,
  what a run reached, per-user test values);
* :mod:`~recbole_mm.benchmark.run`: running a cell in this process or its own (log file, time
  limit, resume) and a grid;
* :mod:`~recbole_mm.benchmark.report`: CSV files and the markdown report;
* :mod:`~recbole_mm.benchmark.significance`: paired tests over test users against a reference row;
* :mod:`~recbole_mm.benchmark.papers`: the papers' numbers beside ours;
* :mod:`~recbole_mm.benchmark.cutoffs`: Hit / NDCG at other cut-offs from finished cells' per-user
  values (``python -m recbole_mm.benchmark.cutoffs``);
* :mod:`~recbole_mm.benchmark.plots`: bars, training curves, noise curves;
* :mod:`~recbole_mm.benchmark.cli`: the command line and ``meta.json``;
* :mod:`~recbole_mm.benchmark.common`: JSON values, file names, statuses, provenance.
"""
from recbole_mm.benchmark.cli import build_parser, main, merge_meta
from recbole_mm.benchmark.common import (CELL_STATUS_DONE, PROJECT_DIR, STATUS_FAILED,
                                         STATUS_NOT_RUN, STATUS_SKIPPED, STATUS_TIMEOUT,
                                         device_description, environment, git_commit, jsonable,
                                         load_cells, reached_summary, safe_name)
from recbole_mm.benchmark.grid import (BASELINES, CELL_REVISION, ID_ONLY_BASELINES,
                                       PAPER_MODELS, PAPER_PROTOCOL_SUFFIX, PROFILES, Cell,
                                       build_grid, has_model_properties, parse_models,
                                       parse_noise, row_label)
from recbole_mm.benchmark.papers import compare_with_papers, noise_paper_drops, row_variant
from recbole_mm.benchmark.plots import make_plots
from recbole_mm.benchmark.probe import (EFFECTIVE_KEYS, Probe, best_epoch_from_curve,
                                        effective_config, stage_epochs)
from recbole_mm.benchmark.report import (GROUP_TITLES, METRIC_ORDER, comparison_groups, display_label,
                                         markdown_report, mean_std, metric_names,
                                         row_configurations, seed_matched_clean, summarize,
                                         write_csvs, write_report)
from recbole_mm.benchmark.run import execute_cell, run_cell, run_grid
from recbole_mm.benchmark.significance import compare as significance_compare
from recbole_mm.benchmark.significance import paired_p
from recbole_mm.config import PROTOCOL_KEYS, parse_cli_value, parse_overrides  # noqa: F401  (API)
