"""From a plain interaction log (and an optional item table) to a runnable recbole-mm dataset.

    python -m recbole_mm.prepare --interactions log.csv --items items.csv --name mydata [--out DIR]

Steps, each in its own module and each printing its counts:

* :mod:`~recbole_mm.prepare.read`: read a CSV / TSV / JSON-lines / Parquet table (``.gz`` too),
  pick the user, item, time, text and image columns (flags, else guessed from common names),
  check times;
* :mod:`~recbole_mm.prepare.filter`: drop rows without ids, handle repeated (user, item) pairs
  (``--duplicates``), optional k-core, sort by time;
* :mod:`~recbole_mm.prepare.features`: item text features through the project's text encoder,
  image features from local image paths through its image encoder (``recbole_mm.encoders``);
* :mod:`~recbole_mm.prepare.write`: the atomic ``<name>.inter``, the dataset yaml, a report, and
  the ``run_recbole_mm.py`` command that runs the dataset.

Everything is validated before the first file is written; every file is written atomically
(``recbole_mm.encoders.io``), the yaml last. Bad input stops with one :class:`PrepareError` that
names the file, column or row and what was expected.
"""


class PrepareError(ValueError):
    """Input that cannot be prepared; the message names the file, column or row."""


def __getattr__(name):  # the pipeline entry point, imported lazily (pandas, encoders)
    if name == "prepare":
        from recbole_mm.prepare.pipeline import prepare

        return prepare
    raise AttributeError(name)


__all__ = ["PrepareError", "prepare"]
