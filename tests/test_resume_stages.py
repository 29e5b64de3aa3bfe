"""Resuming the multi-stage trainers (DeCoRec's phases, SICSRec's steps, MISSRec's stages).

Each test trains a run without interruption, then the same run stopped by an exception in the
first batch of an epoch (inside stage 1, at the first epoch of stage 2 and inside stage 2),
resumes it from its training state and checks that it ends exactly as the uninterrupted run
(CPU, same seed): the epochs trained, the test and validation results, the best checkpoint's and
the last training state's weights, the epochs run per stage and the per-stage results.
"""
import glob

import pytest
import torch


from test_resume import Stop, _settings  # one definition of a stopped run and its settings


def _recorder(calls, trainers, stop_after=None):
    """A trainer hook recording ``(stage, epoch)`` of every training epoch; once ``stop_after``
    epochs have been trained, the next one raises :class:`Stop` in its first batch."""
    def hook(trainer, **_):
        trainers.append(trainer)
        inner = trainer._train_epoch

        def wrapped(data, epoch_idx, *args, **kwargs):
            if len(calls) == stop_after:
                def boom(interaction):
                    raise Stop(f"stopped in epoch {epoch_idx}")
                kwargs["loss_func"] = boom
            calls.append((trainer.resume_stage()["name"], epoch_idx))
            return inner(data, epoch_idx, *args, **kwargs)

        trainer._train_epoch = wrapped
    return hook


def _load(path):
    from recbole_mm.compat import load_checkpoint

    return load_checkpoint(path)


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for key, value in a.items():
        if value.is_floating_point():
            assert torch.allclose(value, b[key], atol=1e-6), key
        else:
            assert torch.equal(value, b[key]), key


def _check_resume(model, tiny_root, tmp_path, stop_after, expect_state, best_key=None, **over):
    """Run ``model`` uninterrupted and stopped after ``stop_after`` epochs, resume, compare.

    ``expect_state``: the stopped run's training state (stage name, epoch). ``best_key``: a
    function of the run's result giving the file to compare as the best checkpoint (default: the
    result's ``saved_model_file``)."""
    from recbole_mm.quick_start import run_recbole_mm

    best_key = best_key or (lambda result: result["saved_model_file"])
    full_calls, full_trainer = [], []
    full = run_recbole_mm(model, "mm_sample", config_dict=_settings(tiny_root, tmp_path / "a", **over),
                          trainer_hook=_recorder(full_calls, full_trainer))

    first = []
    with pytest.raises(Stop):
        run_recbole_mm(model, "mm_sample", config_dict=_settings(tiny_root, tmp_path / "b", **over),
                       trainer_hook=_recorder(first, [], stop_after=stop_after))
    assert first == full_calls[:stop_after + 1]
    states = glob.glob(str(tmp_path / "b" / "*.resume.pth"))
    assert len(states) == 1
    saved = _load(states[0])
    assert (saved["stage"]["name"], saved["epoch"]) == expect_state

    again, resumed_trainer = [], []
    resumed = run_recbole_mm(resume=states[0].replace(".resume.pth", ".pth"),
                             trainer_hook=_recorder(again, resumed_trainer))
    assert again == full_calls[stop_after:]  # the stopped epoch, then the rest
    assert dict(resumed["test_result"]) == pytest.approx(dict(full["test_result"]), abs=1e-7)
    if full["best_valid_result"] is not None:
        assert resumed["best_valid_score"] == pytest.approx(full["best_valid_score"], abs=1e-7)
        assert dict(resumed["best_valid_result"]) == pytest.approx(dict(full["best_valid_result"]),
                                                                   abs=1e-7)
    best_a, best_b = _load(best_key(full)), _load(best_key(resumed))
    assert best_a["epoch"] == best_b["epoch"]
    _same_weights(best_a["state_dict"], best_b["state_dict"])
    last_a = _load(full_trainer[0]._resume_file)
    last_b = _load(states[0])
    assert (last_a["stage"], last_a["epoch"]) == (last_b["stage"], last_b["epoch"])
    _same_weights(last_a["state_dict"], last_b["state_dict"])
    opt_a, opt_b = last_a["optimizer"]["state"], last_b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        _same_weights(opt_a[k], opt_b[k])
    a, b = full_trainer[0], resumed_trainer[0]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert p.requires_grad == q.requires_grad  # the stage's frozen parameters
    return a, b


# stop after 1 epoch (inside stage 1), after 2 (at stage 2's first epoch: the state is stage 2's
# start) and after 3 (inside stage 2); epochs 4 = 2 + 2
STOPS = [(1, 0), (2, -1), (3, 0)]


@pytest.mark.parametrize("stop_after, epoch", STOPS)
def test_decorec_resumes_in_either_phase(tiny_root, tmp_path, stop_after, epoch):
    stage = "phase 1" if stop_after < 2 else "phase 2"
    a, b = _check_resume("DeCoRec", tiny_root, tmp_path, stop_after, (stage, epoch),
                         adapter_hidden=16, kmeans_niter=5)
    assert a.stage_epochs == b.stage_epochs == {"phase 1": {"budget": 2, "run": 2},
                                                "phase 2": {"budget": 2, "run": 2}}
    assert list(b.stage_results) == ["phase 1", "phase 2"]
    for name, (score, result) in a.stage_results.items():
        assert b.stage_results[name][0] == pytest.approx(score, abs=1e-7)
        assert dict(b.stage_results[name][1]) == pytest.approx(dict(result), abs=1e-7)
    assert b.model.phase == 2
    assert not any(p.requires_grad for p in b.model.adapter.parameters())  # frozen in phase 2
    assert b.phase_model_files == {1: b.saved_model_file.replace(".pth", "-phase1.pth"),
                                   2: b.saved_model_file}


def test_decorec_released_frozen_embeddings_resume(tiny_root, tmp_path):
    """compat_frozen_embeddings: the embeddings' gradients, outside the optimiser, accumulate and
    are clipped with the rest; the training state keeps them."""
    _check_resume("DeCoRec", tiny_root, tmp_path, 3, ("phase 2", 0), adapter_hidden=16,
                  kmeans_niter=5, compat_frozen_embeddings=True)


@pytest.mark.parametrize("stop_after, epoch", STOPS)
def test_sicsrec_resumes_in_either_step(tiny_root, tmp_path, stop_after, epoch):
    stage = "step 1" if stop_after < 2 else "step 2"
    a, b = _check_resume("SICSRec", tiny_root, tmp_path, stop_after, (stage, epoch))
    assert a.stage_epochs == b.stage_epochs == {"step 1": {"budget": 2, "run": 2},
                                                "step 2": {"budget": 2, "run": 2}}
    assert list(b.stage_results) == ["step 1", "step 2"]
    assert b.model.current_step == 2 and int(b.model.train_step) == 2


def test_missrec_pretraining_resumes(tiny_root, tmp_path):
    """Pre-training: MISSRec's own loop (no validation, a checkpoint every save_step epochs)."""
    a, b = _check_resume("MISSRec", tiny_root, tmp_path, 2, ("pretrain", 1),
                         train_stage="pretrain", save_step=1)
    assert a.saved_model_file.endswith("MISSRec-mm_sample-4.pth")
    assert b.saved_model_file.endswith("MISSRec-mm_sample-4.pth")
    assert int(a.model.interest_round) == int(b.model.interest_round) == 3


def test_missrec_peft_finetuning_resumes(tiny_root, tmp_path):
    """Fine-tuning a pre-trained checkpoint with frozen encoder (peft) and early stopping."""
    from recbole_mm.quick_start import run_recbole_mm

    pre = run_recbole_mm("MISSRec", "mm_sample", config_dict=_settings(
        tiny_root, tmp_path / "pre", train_stage="pretrain", epochs=1))
    a, b = _check_resume("MISSRec", tiny_root, tmp_path, 2, ("inductive_ft", 1),
                         train_stage="inductive_ft", pretrained_path=pre["saved_model_file"])
    assert any(not p.requires_grad for p in b.model.parameters())


def _stopped(tiny_root, folder, model, stop_after, **over):
    """The training state of ``model`` stopped after ``stop_after`` epochs."""
    from recbole_mm.quick_start import run_recbole_mm

    with pytest.raises(Stop):
        run_recbole_mm(model, "mm_sample", trainer_hook=_recorder([], [], stop_after=stop_after),
                       config_dict=_settings(tiny_root, folder, **over))
    state, = glob.glob(str(folder / "*.resume.pth"))
    return state


def test_resume_refuses_another_schedule(tiny_root, tmp_path):
    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.resume import ResumeError

    state = _stopped(tiny_root, tmp_path, "DeCoRec", 3, adapter_hidden=16, kmeans_niter=5)
    with pytest.raises(ResumeError, match=r"DeCoRecTrainer run stopped in stage 'phase 2', but "
                                          r"this run's stages are \['phase 1'\]"):
        run_recbole_mm(resume=state, config_dict={"phase_schedule": "phase1_only"})


def test_finished_run_resumes_its_last_stage_with_more_epochs(tiny_root, tmp_path):
    """epochs 2 = 1 + 1; resuming with epochs 4 (2 + 2) trains phase 2's second epoch only."""
    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.resume import ResumeError

    done = run_recbole_mm("DeCoRec", "mm_sample", config_dict=_settings(
        tiny_root, tmp_path, epochs=2, adapter_hidden=16, kmeans_niter=5))
    with pytest.raises(ResumeError, match="has trained all 1 epochs of stage 'phase 2'; pass a "
                                          "larger --epochs"):
        run_recbole_mm(resume=done["saved_model_file"])
    calls, trainers = [], []
    more = run_recbole_mm(resume=done["saved_model_file"], config_dict={"epochs": 4},
                          trainer_hook=_recorder(calls, trainers))
    assert calls == [("phase 2", 1)]
    assert trainers[0].stage_epochs == {"phase 1": {"budget": 1, "run": 1},
                                        "phase 2": {"budget": 2, "run": 2}}
    assert more["saved_model_file"] == done["saved_model_file"]


def test_decorec_joint_schedule_resumes(tiny_root, tmp_path):
    """phase_schedule joint: one stage, the phase-2 model trained from scratch."""
    _, b = _check_resume("DeCoRec", tiny_root, tmp_path, 2, ("phase 2 (joint)", 1),
                         adapter_hidden=16, kmeans_niter=5, phase_schedule="joint")
    assert b.stage_epochs == {"phase 2 (joint)": {"budget": 4, "run": 4}}


def test_resume_refuses_another_missrec_stage(tiny_root, tmp_path):
    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.resume import ResumeError

    state = _stopped(tiny_root, tmp_path, "MISSRec", 1, train_stage="pretrain")
    with pytest.raises(ResumeError, match="is a MISSRec 'pretrain' run, this run's train_stage "
                                          "is 'inductive_ft'"):
        run_recbole_mm(resume=state, config_dict={"train_stage": "inductive_ft"})
