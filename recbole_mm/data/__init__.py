from recbole_mm.data.dataset import MMSequentialDataset  # noqa: F401
