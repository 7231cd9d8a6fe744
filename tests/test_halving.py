"""``find --select halving``: rungs that follow eta, continuation equal to training straight through, workers that
take each rung's students once, resume after SIGKILL, the report's rungs, bad input — on real data (digits)."""

import json
import math
import shutil
import signal
import subprocess

import optuna
import pandas as pd
import pytest
import torch
import yaml

from kdsearch.cli import main
from kdsearch.distill.halving import Rung, cut_in_noise, order_members, plan_rungs, restarts_for, rung_score, student_epochs
from kdsearch.exceptions import RecipeError
from kdsearch.pipeline.worker import STUDENTS_STUDY
from kdsearch.search.storage import make_storage
from kdsearch.training import Recipe, fit
from tests.test_workers import finish, spawn, wait_for

TEACHER = "tests.test_teacher:tiny_teacher"


def halving_args(out, *extra, pool=7, eta=2, epochs=4):
    return ["find", "--teacher", TEACHER, "--budget", "0.3Mparams", "--data", "digits", "--space", "resnet_cifar_s1",
            "--proxy", "params", "--trials", "20", "--top-k", "2", "--front", "0", "--controls", "0", "--epochs", str(epochs),
            "--teacher-epochs", "10", "--train-samples", "500", "--val-samples", "300", "--batch-size", "32", "--select", "halving", "--pool", str(pool),
            "--eta", str(eta), "--heartbeat", "1", "--out", str(out), "-q", *extra]


# ---------------------------------------------------------------------- the rules (pure)
def test_rungs_shrink_by_eta_until_the_top_k_go_to_the_full_recipe():
    assert plan_rungs(27, 3, 3, 1, 15) == [Rung(0, 27, 1), Rung(1, 9, 3), Rung(2, 3, 15)]
    assert student_epochs(plan_rungs(27, 3, 3, 1, 15)) == 27 + 9 * 2 + 3 * 12
    assert plan_rungs(7, 2, 2, 1, 4) == [Rung(0, 7, 1), Rung(1, 4, 2), Rung(2, 2, 4)]
    assert plan_rungs(20, 1, 2, 2, 10) == [Rung(0, 20, 2), Rung(1, 10, 4), Rung(2, 5, 8), Rung(3, 3, 10)]
    assert plan_rungs(3, 3, 3, 1, 10) == [Rung(0, 3, 10)]  # nothing to halve
    assert restarts_for(plan_rungs(27, 3, 3, 1, 15), "restart") == (1, 3)
    assert restarts_for(plan_rungs(27, 3, 3, 1, 15), "snapshot") == ()
    # --finish target: the rungs of --epochs 6, the survivors' last rung to the target recipe (15)
    assert plan_rungs(27, 3, 3, 1, 6, 15) == [Rung(0, 27, 1), Rung(1, 9, 3), Rung(2, 3, 15)]
    assert restarts_for(plan_rungs(27, 3, 3, 1, 6, 15), "restart") == (1, 3)
    assert plan_rungs(3, 3, 3, 1, 10, 25) == [Rung(0, 3, 25)]


def test_a_restart_begins_a_new_warm_up_and_decays_to_zero_before_it():
    recipe = Recipe(epochs=6, lr=0.1, warmup_epochs=1, restarts=(2,))
    steps = 10
    lrs = [recipe.lr_at_step(s, steps) for s in range(60)]
    # segment 1: epochs 0-1 (warm-up of min(1, 2/5) epoch = 4 steps), segment 2: epochs 2-5 (warm-up 0.8 epoch = 8 steps)
    assert lrs[0] == pytest.approx(0.1 / 4) and lrs[3] == pytest.approx(0.1)
    assert lrs[19] < 0.01 and lrs[20] == pytest.approx(0.1 / 8) and lrs[27] == pytest.approx(0.1)
    assert lrs[59] < 0.001
    plain = Recipe(epochs=6, lr=0.1, warmup_epochs=1)
    assert "restarts" not in plain.to_dict() and plain.segments() == [(0, 6)]
    with pytest.raises(RecipeError, match="restarts"):
        Recipe(epochs=4, restarts=(4,))


def test_accuracy_plus_proxy_lets_the_proxy_order_what_the_rung_cannot_tell_apart():
    scores = {"a": 0.80, "b": 0.79, "c": 0.60, "d": 0.59}
    proxy = {"a": 1.0, "b": 2.0, "c": 4.0, "d": 3.0}
    assert order_members(scores, proxy, "accuracy", 300) == ["a", "b", "c", "d"]
    # on 300 images 0.80 vs 0.79 is within one standard error; 0.80 vs 0.60 is not
    assert order_members(scores, proxy, "accuracy+proxy", 300) == ["b", "a", "c", "d"]
    assert order_members(scores, proxy, "accuracy+proxy", 10**9) == ["a", "b", "c", "d"]
    history = [{"epoch": e, "val_accuracy": 0.5 + 0.1 * math.log(e), "val_kd_loss": 3.0 / e} for e in (1, 2, 3)]
    assert rung_score(history, "extrapolated", start_epoch=0, epochs=9) == pytest.approx(0.5 + 0.1 * math.log(9))
    assert rung_score(history, "kd_loss") == pytest.approx(-1.0)
    assert rung_score(history[:1], "extrapolated", epochs=9) == pytest.approx(0.5)  # one point: its accuracy


def test_rank_blend_orders_by_the_mean_of_the_rung_rank_and_the_proxy_rank():
    scores = {"a": 0.80, "b": 0.70, "c": 0.60, "d": 0.50}
    proxy = {"a": 1.0, "b": 4.0, "c": 3.0, "d": 2.0}
    # ranks (score, proxy): a (1, 4), b (2, 1), c (3, 2), d (4, 3) -> sums 5, 3, 5, 7; a and c tie: a's score is higher
    assert order_members(scores, proxy, "rank_blend", 300) == ["b", "a", "c", "d"]
    assert rung_score([{"epoch": 1, "val_accuracy": 0.4}], "rank_blend") == 0.4


def test_a_cut_inside_the_validation_noise_names_the_students_it_could_not_tell_apart():
    scores = {"a": 0.80, "b": 0.70, "c": 0.69, "d": 0.50}
    order = ["a", "b", "c", "d"]
    # keep 2: b (0.70) and c (0.69) are 0.4 standard errors apart on 300 images, d is 5 away
    assert cut_in_noise(order, scores, 2, 300) == ["c"]
    assert cut_in_noise(order, scores, 2, 10**9) == []  # on enough images the cut is real
    assert cut_in_noise(order, scores, 4, 300) == [] and cut_in_noise(order, {**scores, "a": -2.0}, 2, 300) == []


# ---------------------------------------------------------------------- the trainer
def test_a_training_stopped_at_a_rung_and_continued_equals_one_trained_straight_through(digits_task, tmp_path):
    from kdsearch.spaces import create_model

    config = {"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 16}
    recipe = Recipe(epochs=3, batch_size=64, restarts=(1,), seed=3)

    def model():
        torch.manual_seed(3)
        return create_model(config, num_classes=10, in_chans=digits_task.in_chans)

    straight = model()
    whole = fit(straight, digits_task, recipe, checkpoint=tmp_path / "a.pt")
    stepped = model()
    seen = []
    first = fit(stepped, digits_task, recipe, checkpoint=tmp_path / "b.pt", stop_at_epoch=1, on_epoch=seen.append)
    assert first.epochs == 1 and [h["epoch"] for h in seen] == [1]
    stepped = model()  # a new process: the weights come back from the checkpoint
    rest = fit(stepped, digits_task, recipe, checkpoint=tmp_path / "b.pt", on_epoch=seen.append)
    assert [h["epoch"] for h in seen] == [1, 2, 3] and [h["epoch"] for h in rest.history] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), stepped.state_dict().values()):
        assert torch.equal(a, b), name
    assert rest.accuracy == whole.accuracy


# ---------------------------------------------------------------------- find --select halving, end to end
@pytest.fixture(scope="module")
def halving_run(tmp_path_factory):
    """One halving run on digits with a local worker beside find (SQLite): 7 in the pool, eta 2, 4 epochs, the default
    restart design (the snapshot design runs in the PostgreSQL test)."""
    out = tmp_path_factory.mktemp("halving") / "run"
    proc = spawn(*halving_args(out, "--workers", "1"))
    _, err = finish(proc, 900)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_halving_rungs_and_survivors_follow_eta_exactly(halving_run):
    state = json.loads((halving_run / "halving.json").read_text())
    assert [(r["members"], r["until_epoch"]) for r in state["plan"]] == [(7, 1), (4, 2), (2, 4)]
    rungs = state["rungs"]
    assert [len(r["members"]) for r in rungs] == [7, 4, 2] and [len(r["survivors"]) for r in rungs] == [4, 2, 2]
    for rung, after in zip(rungs, rungs[1:]):
        assert after["members"] == rung["survivors"]
        best = sorted(rung["scores"], key=lambda c: (-rung["scores"][c], c))
        assert sorted(rung["survivors"]) == sorted(best[: len(rung["survivors"])])  # the best by the rung's accuracy
        lowest_kept = min(rung["scores"][c] for c in rung["survivors"])
        assert all(rung["scores"][c] <= lowest_kept for c in rung["members"] if c not in rung["survivors"])
    df = pd.read_csv(halving_run / "candidates.csv").set_index("candidate_id")
    pool = state["pool"]
    assert df.loc[pool, "params"].is_monotonic_decreasing  # the pool is the proxy's top within the budget
    survivors = set(state["survivors"])
    assert set(df.index[df["role"] == "top"]) == survivors and df.loc[list(survivors), "distilled_accuracy"].notna().all()
    cut = [c for c in pool if c not in survivors]
    assert df.loc[cut, "distilled_accuracy"].isna().all() and (df.loc[cut, "role"] == "pool").all()
    expected_stop = {c: max(r["until_epoch"] for r in rungs if c in r["members"]) for c in pool}
    assert df.loc[pool, "stopped_at_epoch"].astype(int).to_dict() == expected_stop
    for cid in pool:  # every rung a student reached is in its folder, its learning curve epoch by epoch
        for rung in rungs:
            record = json.loads((halving_run / "students" / cid / f"rung{rung['index']}.json").read_text()) if cid in rung["members"] else None
            if record:
                assert [h["epoch"] for h in record["history"]] == list(range(1, rung["until_epoch"] + 1))
                assert all("val_kd_loss" in h for h in record["history"])
    result = json.loads((halving_run / "students" / state["survivors"][0] / "result.json").read_text())
    assert result["recipe"]["restarts"] == [1, 2]


def test_two_processes_distil_each_rung_of_each_student_exactly_once(halving_run):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    students = optuna.load_study(study_name=STUDENTS_STUDY, storage=make_storage(f"sqlite:///{halving_run / 'study.db'}"))
    done = [t for t in students.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    units = [(t.user_attrs["candidate_id"], t.user_attrs["rung"]) for t in done]
    assert len(units) == len(set(units)) == 7 + 4 + 2
    # each unit reported its validation accuracy per epoch to its trial, as Optuna's pruners read it
    starts = {0: 0, 1: 1, 2: 2}  # rung r continues from the epoch rung r - 1 ended at
    for t in done:
        rung = t.user_attrs["rung"]
        assert sorted(t.intermediate_values) == list(range(starts[rung] + 1, t.user_attrs["until_epoch"] + 1))
        assert t.value == pytest.approx(t.intermediate_values[t.user_attrs["until_epoch"]])
    assert len({t.user_attrs["pid"] for t in done}) in (1, 2)


def test_a_survivor_equals_the_same_student_distilled_straight_through(halving_run, tmp_path):
    from safetensors.torch import load_file

    from kdsearch.pipeline import train_student

    state = json.loads((halving_run / "halving.json").read_text())
    cid = state["survivors"][0]
    df = pd.read_csv(halving_run / "candidates.csv").set_index("candidate_id")
    recipe = json.loads((halving_run / "students" / cid / "result.json").read_text())["recipe"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the run's processes trained with one thread each (spawn sets OMP_NUM_THREADS=1)
    try:
        train_student(from_run=halving_run, trial=int(df.loc[cid, "trial"]), recipe=Recipe(**recipe),
                      out=tmp_path / "whole", quiet=True)
    finally:
        torch.set_num_threads(threads)
    ours = load_file(str(halving_run / "students" / cid / "model.safetensors"))
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert ours.keys() == whole.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], whole[name], rtol=0, atol=1e-6, msg=name)


def test_the_report_shows_the_rungs(halving_run, capsys):
    assert main(["report", str(halving_run)]) == 0
    out = capsys.readouterr().out
    assert "halving: 7 -> 4 -> 2 students (eta 2" in out and "rung 0: 7 to epoch 1, kept 4" in out
    assert "Kendall τ of its scores with the survivors' final ones" in out and "the proxy's top-1" in out
    # the recipe the choice was made for: find's 4 epochs, a target of 2.5 x 4 = 10 by default
    assert "for a student to be distilled for 10 epochs (--target-epochs); find distilled each for 4" in out
    state = json.loads((halving_run / "halving.json").read_text())
    assert state["target_epochs"] == 10
    for rung in state["rungs"][:-1]:  # a cut the noise decided is named, and said
        kept = rung["survivors"][-1]
        for cid in rung["cut_in_noise"]:
            assert cid in rung["members"] and cid not in rung["survivors"]
            assert rung["scores"][kept] - rung["scores"][cid] <= math.sqrt(2 * 0.25 / 300) + 1e-9
        if rung["cut_in_noise"]:
            assert f"rung {rung['index']}:" in out and "the cut lay within the validation noise" in out
    html = (halving_run / "report.html").read_text()
    assert "Successive halving: each pool member" in html and "cut after rung 0" in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    flags = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
             "--user-data-dir=/tmp/kdsearch-chromium-halving", "--enable-logging=stderr", "--v=0", "--dump-dom",
             (halving_run / "report.html").resolve().as_uri()]
    dom = subprocess.run(flags, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and dom.stdout.count('class="main-svg"') >= 4  # front, proxy, curves, rungs drawn


@pytest.mark.slow
def test_a_find_killed_mid_rung_resumes_and_ends_as_an_uninterrupted_run(halving_run, tmp_path):
    out = tmp_path / "run"
    proc = spawn(*halving_args(out))

    def in_rung_one():
        state = json.loads((out / "halving.json").read_text()) if (out / "halving.json").exists() else {}
        return len(state.get("rungs", [])) == 1 and any((out / "students").glob("*/checkpoint.pt"))

    wait_for(in_rung_one, 600, "find to be inside rung 1")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = spawn(*halving_args(out))
    _, err = finish(again, 900)
    assert again.returncode == 0, err[-3000:]
    resumed, reference = (json.loads((p / "halving.json").read_text()) for p in (out, halving_run))
    assert [r["survivors"] for r in resumed["rungs"]] == [r["survivors"] for r in reference["rungs"]]
    for ours, theirs in zip(resumed["rungs"], reference["rungs"]):
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-9)
    for cid in resumed["pool"]:  # no epoch trained twice into a record: each rung's curve has each epoch once
        for rung in resumed["rungs"]:
            path = out / "students" / cid / f"rung{rung['index']}.json"
            if path.exists():
                epochs = [h["epoch"] for h in json.loads(path.read_text())["history"]]
                assert epochs == sorted(set(epochs))


@pytest.mark.parametrize("extra, message", [
    (["--eta", "1"], "--eta must be at least 2"),
    (["--pool", "1"], "--pool 1 is smaller than --top-k 2"),
    (["--epochs", "1"], "--select halving needs --epochs 2 or more"),
    (["--first-rung", "4"], "--first-rung must lie between 1 and --epochs - 1 = 3"),
])
def test_bad_halving_settings_are_one_sentence_and_exit_2(tmp_path, capsys, extra, message):
    args = halving_args(tmp_path / "run")
    code = main([*args, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.slow
def test_halving_with_two_workers_on_postgres_distils_each_rung_unit_once(postgres, tmp_path):
    from tests.test_workers import studies

    url = postgres.new_database("halving_workers")
    out = tmp_path / "run"
    proc = spawn(*halving_args(out, "--storage", url, "--workers", "2", "--rung-design", "snapshot"))
    _, err = finish(proc, 900)
    assert proc.returncode == 0, err[-3000:]
    _, students = studies(url)
    done = [t for t in students.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    units = [(t.user_attrs["candidate_id"], t.user_attrs.get("rung")) for t in done]
    assert len(units) == len(set(units)) == 7 + 4 + 2
    state = json.loads((out / "halving.json").read_text())
    assert [len(r["members"]) for r in state["rungs"]] == [7, 4, 2]
    assert pd.read_csv(out / "candidates.csv")["distilled_accuracy"].notna().sum() == 2
    result = json.loads((out / "students" / state["survivors"][0] / "result.json").read_text())
    assert "restarts" not in result["recipe"]  # the snapshot design: the survivors' recipe is the run's own


def test_finish_target_distils_the_survivors_to_the_target_recipe_and_the_control_to_the_run_s(tmp_path, capsys):
    """--finish target: the last rung takes the survivors to --target-epochs (their final order made there, the student
    to ship trained for it); a control (or a cut member standing for one) gets find's --epochs like any other."""
    out = tmp_path / "run"
    args = halving_args(out, "--finish", "target", "--target-epochs", "5", "--controls", "1", pool=4, epochs=3)
    assert main(args) == 0
    state = json.loads((out / "halving.json").read_text())
    assert [(r["members"], r["until_epoch"]) for r in state["plan"]] == [(4, 1), (2, 5)]
    assert state["target_epochs"] == 5 and state["full_top_k_epochs"] == 2 * 5
    df = pd.read_csv(out / "candidates.csv").set_index("candidate_id")
    for cid in state["survivors"]:
        result = json.loads((out / "students" / cid / "result.json").read_text())
        assert result["recipe"]["epochs"] == 5 and result["recipe"]["restarts"] == [1]
        assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4, 5]
    control = df.index[df["role"] == "control"]
    assert len(control) == 1
    result = json.loads((out / "students" / control[0] / "result.json").read_text())
    assert result["recipe"]["epochs"] == 3 and len(result["history"]) == 3
    assert main(["report", str(out)]) == 0
    assert "the survivors were distilled for 5 (--finish target), so the top picks are the students you ship" in capsys.readouterr().out
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["selection"]["finish"] == "target"


def test_the_api_takes_the_same_halving_settings_and_refuses_the_same_mistakes(tmp_path):
    from kdsearch.exceptions import KdsearchError
    from kdsearch.pipeline import find
    from kdsearch.run import RunSettings

    settings = RunSettings.create(TEACHER, "0.3Mparams", select="halving", pool=9, eta=3, top_k=3, epochs=4,
                                  out=tmp_path / "run")
    assert settings.selection == {"select": "halving", "pool": 9, "eta": 3, "first_rung": 1, "rung_design": "restart",
                                  "rung_signal": "accuracy"}
    assert settings.identity()["selection"] == settings.selection  # a run is not resumed under another selection
    assert "selection" not in RunSettings.create(TEACHER, "0.3Mparams", select="proxy").identity()  # older runs resume
    with pytest.raises(KdsearchError, match="--eta must be at least 2"):
        find(TEACHER, "0.3Mparams", select="halving", eta=1, out=tmp_path / "bad")
    with pytest.raises(KdsearchError, match="--finish must be one of epochs, target"):
        find(TEACHER, "0.3Mparams", select="halving", finish="later", out=tmp_path / "bad")
    assert RunSettings.create(TEACHER, "0.3Mparams", select="halving", finish="target").selection["finish"] == "target"
    assert not (tmp_path / "bad").exists()


def test_the_target_recipe_is_recorded_checked_and_defaults_to_a_multiple_of_the_epochs(tmp_path, capsys):
    from kdsearch.exceptions import KdsearchError
    from kdsearch.run import RunSettings

    assert RunSettings.create(TEACHER, "0.3Mparams", epochs=6).target_epochs == 15  # 2.5 x --epochs
    assert RunSettings.create(TEACHER, "0.3Mparams", epochs=3).target_epochs == 8  # rounded up
    settings = RunSettings.create(TEACHER, "0.3Mparams", epochs=6, target_epochs=40, select="halving")
    assert settings.target_epochs == 40 and settings.to_config()["target_epochs"] == 40
    assert RunSettings.from_config(settings.to_config(), tmp_path).target_epochs == 40
    for bad, message in ((4, "--target-epochs 4 is shorter than --epochs 6"), ("many", "must be a whole number")):
        with pytest.raises(KdsearchError, match=message):
            RunSettings.create(TEACHER, "0.3Mparams", epochs=6, target_epochs=bad)
    for extra, message in ((["--target-epochs", "2"], "--target-epochs 2 is shorter than --epochs 4"),
                           (["--target-epochs", "ten"], "--target-epochs: expected a whole number, got 'ten'")):
        code = main([*halving_args(tmp_path / "run"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
        assert not (tmp_path / "run").exists()


def test_select_auto_is_halving_where_it_can_run_and_says_why_it_falls_back_to_the_proxy(tmp_path):
    from kdsearch.run import RunSettings

    shipped_as_found = RunSettings.create(TEACHER, "0.3Mparams", target_epochs=10, out=tmp_path / "run")
    assert shipped_as_found.selection["select"] == "halving" and shipped_as_found.auto_selection == ""
    # the default target (2.5 x --epochs 10): longer than find's recipe, where the proxy's pick did better
    default = RunSettings.create(TEACHER, "0.3Mparams")
    assert default.selection == {"select": "proxy"} and "--target-epochs 25" in default.auto_selection
    assert RunSettings.create(TEACHER, "0.3Mparams", select="proxy").auto_selection is None  # the user's choice
    one_epoch = RunSettings.create(TEACHER, "0.3Mparams", epochs=1)
    assert one_epoch.selection == {"select": "proxy"} and "--epochs 1" in one_epoch.auto_selection
    whole_pool = RunSettings.create(TEACHER, "0.3Mparams", top_k=5, pool=5)
    assert whole_pool.selection == {"select": "proxy"} and "--top-k 5 would keep the whole --pool 5" in whole_pool.auto_selection


def test_select_auto_resumes_a_run_with_the_selection_it_was_started_with(tmp_path):
    """A run started as a proxy run (before halving became the default, or with --select proxy) resumes as one."""
    from kdsearch.pipeline.find import _settle_selection
    from kdsearch.run import RunFolder, RunSettings

    out = tmp_path / "run"
    out.mkdir()
    started = RunSettings.create(TEACHER, "0.3Mparams", select="proxy", out=out)
    (out / "config.yaml").write_text(yaml.safe_dump(started.to_config()))
    resumed = _settle_selection(RunSettings.create(TEACHER, "0.3Mparams", out=out), RunFolder(out))
    assert resumed.selection == {"select": "proxy"}
    RunFolder(out).check_can_start(resumed)  # the same study: no refusal
    fresh = _settle_selection(RunSettings.create(TEACHER, "0.3Mparams", target_epochs=10, out=tmp_path / "new"),
                              RunFolder(tmp_path / "new"))
    assert fresh.selection["select"] == "halving"


@pytest.mark.slow
def test_a_pool_that_holds_the_whole_budget_still_leaves_a_front_and_a_control(tmp_path):
    """Find's default selection (--select auto, for a student shipped as find distilled it: halving) with a
    candidate-config teacher, the pool larger than what fits: every candidate
    within the budget is in it, so the bands' picks and the control are pool members that halving cut — each is distilled on to the full recipe from its rung checkpoint, on the
    rungs' schedule, and keeps the record of the rung that cut it."""
    from tests.test_teacher import TINY

    out = tmp_path / "run"
    args = halving_args(out, pool=27, eta=3, epochs=3)
    args[args.index("--front") + 1], args[args.index("--controls") + 1] = "2", "1"
    del args[args.index("--select"):args.index("--select") + 2]  # the default, auto: halving for find's own recipe
    args += ["--target-epochs", "3"]
    teacher = tmp_path / "teacher.json"  # and the teacher given as a candidate config
    teacher.write_text(json.dumps(TINY))
    args[args.index("--teacher") + 1] = str(teacher)
    assert main(args) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["selection"]["select"] == "halving"
    state = json.loads((out / "halving.json").read_text())
    df = pd.read_csv(out / "candidates.csv").set_index("candidate_id")
    assert len(state["pool"]) == (df["params"] <= 300_000).sum() < 27  # every candidate within the budget
    promoted = df[df["role"].isin(["band 1", "band 2", "control"])]
    assert "control" in set(promoted["role"])
    # each band that holds a candidate within the budget is stood for: by a survivor lying in it (which survivors
    # those are depends on the rungs' accuracies), or by a band pick — a cut pool member
    from kdsearch.pipeline.finalists import band_of

    edges = [df["params"].min() * (300_000 / df["params"].min()) ** (i / 2) for i in range(3)]  # --front 2, by params
    holding = {band_of(v, edges) for v in df.loc[df["within_budget"], "params"]}
    stood_for = {band_of(v, edges) for v in df.loc[df["role"] == "top", "params"]}
    stood_for |= {int(r.split()[1]) for r in promoted["role"] if r.startswith("band")}
    assert holding == {1, 2} and holding <= stood_for
    survivors = set(state["survivors"])
    for cid, row in promoted.iterrows():
        assert cid in state["pool"] and cid not in survivors and row["stopped_at_epoch"] < 3
        result = json.loads((out / "students" / cid / "result.json").read_text())
        assert [h["epoch"] for h in result["history"]][-1] == 3 and result["recipe"]["restarts"] == [1]
        assert row["distilled_accuracy"] == pytest.approx(result["val_accuracy"])
    assert set(df.index[df["role"] == "top"]) == survivors
