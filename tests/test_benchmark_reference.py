"""The papers' reported numbers shipped as package data (recbole_mm/reference/*.csv)."""
import csv
import os
import re

import pytest

from recbole_mm import reference

PAPERS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "papers"))
COLUMNS = ["paper", "table", "dataset", "our_dataset", "model", "our_model", "setting", "metric",
           "metric_printed", "printed", "value", "compare", "note"]
# numbers per table: (rows x columns of the printed tables)
EXPECTED_COUNTS = {
    ("DeCoRec", "Table 2"): 5 * 4 * 7, ("DeCoRec", "Table 4"): 7 * 4,
    ("MISSRec", "Table 2"): 5 * 4 * 11, ("MISSRec", "Table 3"): 15 * 8,
    ("MISSRec", "Table 4"): 4 * 8, ("MISSRec", "Table 5"): 6 * 8,
    ("SGP4SR", "Table 2"): 4 * 4 * 10, ("SGP4SR", "Table 3"): 6 * 6,
    ("SGP4SR", "Figure 3 (text)"): 8,
    ("SICSRec", "Table 4"): 4 * 4 * 12, ("SICSRec", "Table 5"): 4 * 8, ("SICSRec", "Table 6"): 7 * 8,
    ("SICSRec", "Table 7"): 7 * 4, ("SICSRec", "Table 8"): 14 * 4, ("SICSRec", "Table 9"): 7 * 4,
    ("MMSR", "Table 5"): 4 * 6 * 8, ("MMSR", "Table 2"): 11 * 4, ("MMSR", "Table 3"): 12 * 4,
    ("MMSR", "Table 4"): 12 * 4,
}


def test_every_csv_has_the_columns_and_counts():
    counts = {}
    for paper in reference.PAPERS:
        with open(os.path.join(os.path.dirname(reference.__file__), f"{paper}.csv")) as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == COLUMNS, paper
            for r in reader:
                counts[(r["paper"], r["table"])] = counts.get((r["paper"], r["table"]), 0) + 1
                assert r["table"], r
                assert re.fullmatch(r"(recall|hit|ndcg)@\d+", r["metric"]), r
    assert counts == EXPECTED_COUNTS


def test_values_are_the_printed_numbers():
    for r in reference.load():
        printed = r["printed"]
        if printed.endswith("%"):  # relative changes (SGP4SR Figure 3 text)
            assert r["value"] == pytest.approx(-float(printed[:-1]) / 100)
        elif r["paper"] == "MMSR":  # MMSR prints percentages
            assert r["value"] == pytest.approx(float(printed) / 100)
        else:
            assert r["value"] == float(printed)
            assert 0 < r["value"] < 1


def test_spot_values_against_the_papers():
    def one(**kw):
        rows = [r for r in reference.load(kw.pop("paper")) if all(r[k] == v for k, v in kw.items())]
        assert len(rows) == 1, (kw, rows)
        return rows[0]["value"]

    assert one(paper="DeCoRec", table="Table 2", dataset="Scientific", model="DeCoRec",
               metric="ndcg@50") == 0.1292
    assert one(paper="DeCoRec", table="Table 4", dataset="Arts", setting="w/o phase",
               metric="hit@10") == 0.1424
    assert one(paper="MISSRec", table="Table 2", dataset="Office", model="MISSRec", setting="T+V",
               metric="ndcg@50") == 0.0977
    assert one(paper="MISSRec", table="Table 3", dataset="Scientific (mm subset)", model="MISSRec",
               setting="ID+T+V", metric="recall@50") == 0.3288
    assert one(paper="SGP4SR", table="Table 2", dataset="Baby", model="SGP4SR",
               metric="recall@10") == 0.0596
    assert one(paper="SGP4SR", table="Table 2", dataset="Pantry", model="MissRec",
               metric="recall@50") == 0.1875
    assert one(paper="SGP4SR", table="Table 3", dataset="Clothing", setting="w/o C2C",
               metric="ndcg@10") == 0.0133
    assert one(paper="SICSRec", table="Table 4", dataset="Food", model="SICSRec",
               metric="hit@5") == 0.1367
    assert one(paper="SICSRec", table="Table 8", dataset="Food", model="SICSRec",
               setting="input T+V") == 0.1092
    assert one(paper="MMSR", table="Table 5", dataset="HM", model="MMSR",
               metric="ndcg@50") == pytest.approx(0.078824)


def test_lookup_matches_hit_and_recall_and_filters_settings():
    sas = reference.lookup("scientific_mm", "SASRec", "recall@10")
    assert [(r["paper"], r["table"], r["value"]) for r in sas] == [("DeCoRec", "Table 2", 0.1523)]
    assert reference.lookup("scientific_mm", "sasrec", "hit@10") == sas
    # MISSRec on scientific_mm: DeCoRec's Table 2 and MISSRec's own Table 3 (ID+T+V) only
    miss = reference.lookup("scientific_mm", "MISSRec", "ndcg@10")
    assert sorted((r["paper"], r["value"]) for r in miss) == [("DeCoRec", 0.0858), ("MISSRec", 0.0793)]
    everything = reference.lookup("scientific_mm", "MISSRec", "ndcg@10", compare_only=False)
    assert len(everything) == 1 + 6  # + every input setting of MISSRec's Table 3
    assert reference.lookup("beauty", "SASRec", "recall@10") == []
    with pytest.raises(ValueError, match="no reference data"):
        reference.load("NoPaper")


def test_compare_rows_name_our_model_and_dataset():
    for r in reference.load():
        if r["compare"]:
            assert r["our_model"] and r["table"] in ("Table 2", "Table 3", "Table 4"), r


def test_every_number_appears_in_the_paper_text():
    src = os.path.join(PAPERS_DIR, "source")
    if not os.path.isdir(src):
        pytest.skip(f"paper texts not available: {src}")
    numbers = {}
    for paper in reference.PAPERS:
        with open(os.path.join(src, f"{paper}.paper.txt"), encoding="utf-8") as f:
            numbers[paper] = set(re.findall(r"\d+(?:\.\d+)?%?", f.read()))
    missing = [r for r in reference.load() if r["printed"] not in numbers[r["paper"]]]
    assert not missing, missing[:5]
