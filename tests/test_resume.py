"""Resuming a stopped training run (recbole_mm.resume) on tiny generated data."""
import glob
import os

import pytest
import torch


class Stop(Exception):
    """Stands for a run killed in the middle of an epoch."""


def _settings(tiny_root, folder, **over):
    cfg = {"data_path": tiny_root, "epochs": 4, "hidden_size": 16, "inner_size": 16,
           "n_layers": 1, "n_heads": 2, "train_batch_size": 64, "eval_batch_size": 256,
           "checkpoint_dir": str(folder), "state": "WARNING", "show_progress": False,
           "reproducibility": True, "seed": 2020, "hidden_dropout_prob": 0.3}
    cfg.update(over)
    return cfg


def _epochs_of(trained, stop_at=None):
    """A trainer hook recording the epochs trained; at ``stop_at`` the first batch raises."""
    def hook(trainer, **_):
        inner = trainer._train_epoch

        def wrapped(data, epoch_idx, *args, **kwargs):
            if epoch_idx == stop_at:
                def boom(interaction):
                    raise Stop(f"stopped in epoch {epoch_idx}")
                kwargs["loss_func"] = boom
            trained.append(epoch_idx)
            return inner(data, epoch_idx, *args, **kwargs)

        trainer._train_epoch = wrapped
    return hook


def _state(path):
    from recbole_mm.compat import load_checkpoint

    return load_checkpoint(path)


@pytest.mark.parametrize("model", ["SASRec"])
def test_resume_after_interrupted_epoch_equals_uninterrupted_run(model, tiny_root, tmp_path):
    from recbole_mm.quick_start import run_recbole_mm

    full_epochs = []
    full = run_recbole_mm(model, "mm_sample", config_dict=_settings(tiny_root, tmp_path / "a"),
                          trainer_hook=_epochs_of(full_epochs))
    assert full_epochs == [0, 1, 2, 3]

    first = []
    with pytest.raises(Stop):
        run_recbole_mm(model, "mm_sample", config_dict=_settings(tiny_root, tmp_path / "b"),
                       trainer_hook=_epochs_of(first, stop_at=2))
    states = glob.glob(str(tmp_path / "b" / f"{model}-*.resume.pth"))
    assert len(states) == 1
    assert _state(states[0])["epoch"] == 1  # epochs 0 and 1 completed, 2 interrupted

    # the command-line form: the checkpoint's name, nothing else
    best_file = states[0].replace(".resume.pth", ".pth")
    assert os.path.isfile(best_file)
    again = []
    resumed = run_recbole_mm(resume=best_file, trainer_hook=_epochs_of(again))
    assert again == [2, 3]  # continues from the saved epoch
    assert resumed["saved_model_file"] == best_file
    assert resumed["best_valid_score"] == pytest.approx(full["best_valid_score"], abs=1e-7)
    assert dict(resumed["best_valid_result"]) == pytest.approx(dict(full["best_valid_result"]), abs=1e-7)
    assert dict(resumed["test_result"]) == pytest.approx(dict(full["test_result"]), abs=1e-7)
    a, b = _state(full["saved_model_file"]), _state(best_file)
    assert a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], atol=1e-6), key
    last_a = _state(full["saved_model_file"].replace(".pth", ".resume.pth"))
    last_b = _state(states[0])
    assert last_a["epoch"] == last_b["epoch"] == 3
    for key, value in last_a["state_dict"].items():
        assert torch.allclose(value, last_b["state_dict"][key], atol=1e-6), key


def test_resume_refuses_finished_and_foreign_runs(tiny_root, tmp_path):
    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.resume import ResumeError

    done = run_recbole_mm("SASRec", "mm_sample",
                          config_dict=_settings(tiny_root, tmp_path / "a", epochs=1))
    with pytest.raises(ResumeError, match="trained all 1 epochs"):
        run_recbole_mm(resume=done["saved_model_file"])
    with pytest.raises(ResumeError, match="is a SASRec run on 'mm_sample', but model 'GRU4Rec'"):
        run_recbole_mm("GRU4Rec", resume=done["saved_model_file"])
    more = run_recbole_mm(resume=done["saved_model_file"], config_dict={"epochs": 2})
    assert _state(done["saved_model_file"].replace(".pth", ".resume.pth"))["epoch"] == 1
    assert more["saved_model_file"] == done["saved_model_file"]

    missing = str(tmp_path / "none.pth")
    with pytest.raises(ResumeError, match="none.resume.pth not found"):
        run_recbole_mm(resume=missing)
    cut = tmp_path / "cut.resume.pth"
    data = open(done["saved_model_file"].replace(".pth", ".resume.pth"), "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResumeError, match="cut.resume.pth is not a complete torch checkpoint"):
        run_recbole_mm(resume=str(cut))
    with pytest.raises(ResumeError, match="not a recbole_mm training state"):
        run_recbole_mm(resume=_best_as_state(done, tmp_path))


def _best_as_state(done, tmp_path):
    """A best checkpoint renamed as a training state: plain data, but no training state."""
    import shutil

    target = str(tmp_path / "best.resume.pth")
    shutil.copy(done["saved_model_file"], target)
    return target


def test_trainer_with_its_own_schedule_must_declare_its_stage():
    """A trainer overriding ``fit`` without resume_stage / restore_stage is refused (the
    plugin's multi-stage trainers declare them: tests/test_resume_stages.py)."""
    from recbole.trainer import Trainer

    from recbole_mm.resume import ResumeError, check_resumable
    from recbole_mm.trainer.decorec import DeCoRecTrainer
    from recbole_mm.trainer.missrec import MISSRecTrainer
    from recbole_mm.trainer.sicsrec import SICSRecTrainer

    class ScheduleTrainer(Trainer):
        def fit(self, *args, **kwargs):
            return super().fit(*args, **kwargs)

    for cls in (Trainer, DeCoRecTrainer, SICSRecTrainer, MISSRecTrainer):
        check_resumable(cls)
    with pytest.raises(ResumeError, match="ScheduleTrainer runs its own training schedule"):
        check_resumable(ScheduleTrainer)
