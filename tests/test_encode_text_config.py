"""dataset_scripts/encode_text.py reads the user's dataset yaml (--config_files) as run_recbole_mm.py does."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataset_scripts import common, encode_text  # noqa: E402


@pytest.fixture
def shop(tmp_path):
    """A user's dataset outside the project: folder, prefix, text columns and feature names set
    only in the user's yaml."""
    root = tmp_path / "data"
    (root / "shop_v2").mkdir(parents=True)
    (root / "shop_v2" / "Shop.item").write_text(
        "item_id:token\ttitle:token_seq\tdescr:token_seq\tbrand:token\n"
        "7\tred glove\twarm wool\tacme\n3\tblue bottle\tsteel\tzeta\n")
    yml = tmp_path / "shop.yaml"
    yml.write_text(f"data_path: {root}\ndataset_dir: shop_v2\nfile_prefix: Shop\n"
                   f"text_fields: [title, descr]\nfeature_dir: {tmp_path / 'feat'}\n"
                   "modalities:\n  text: {file: Shop.text_mini.npy}\n")
    return tmp_path, yml


def _capture(monkeypatch):
    import recbole_mm.encoders as encoders

    seen = {}

    def fake(tokens, texts, enc, out, name, feature, **kw):
        seen.update(tokens=tokens, texts=texts, out=out, name=name, feature=feature)
        return type("R", (), {"matrix": type("M", (), {"shape": (len(tokens), 4)})()})()

    monkeypatch.setattr(encoders, "encode_item_texts", fake)
    monkeypatch.setattr(common, "build_text_encoder", lambda args: None)
    return seen


def test_user_yaml_sets_folder_prefix_fields_feature_name_and_output(shop, monkeypatch):
    tmp_path, yml = shop
    seen = _capture(monkeypatch)
    encode_text.main(["--dataset", "shop", "--config_files", str(yml)])
    assert seen["tokens"] == ["3", "7"]
    assert seen["texts"] == {"7": "red glove warm wool", "3": "blue bottle steel"}  # no brand
    assert (seen["name"], seen["feature"]) == ("Shop", "text_mini")
    assert seen["out"] == str(tmp_path / "feat")
    # command-line options still win over the yaml
    encode_text.main(["--dataset", "shop", "--config_files", str(yml), "--text_fields", "brand",
                      "--out", str(tmp_path / "o")])
    assert seen["texts"] == {"7": "acme", "3": "zeta"} and seen["out"] == str(tmp_path / "o")


def test_later_config_files_win_and_a_missing_one_is_named(shop, monkeypatch, capsys):
    tmp_path, yml = shop
    seen = _capture(monkeypatch)
    extra = tmp_path / "extra.yaml"
    extra.write_text("text_fields: [descr]\n")
    encode_text.main(["--dataset", "shop", "--config_files", f"{yml} {extra}"])
    assert seen["texts"] == {"7": "warm wool", "3": "steel"}
    rc = common.run_main(encode_text.main, ["--dataset", "shop", "--config_files", str(tmp_path / "no.yaml")])
    assert rc == 2 and f"--config_files: no such file {tmp_path / 'no.yaml'}" in capsys.readouterr().err
    # without the user's yaml the project's properties/ do not know the dataset
    assert common.run_main(encode_text.main, ["--dataset", "shop", "--data_path", str(tmp_path)]) == 2
