"""kdsearch.run: settings validated once and stored whole; the run folder owns its files and the resume check."""

import pytest
import yaml

from kdsearch.exceptions import BudgetError, KdsearchError, LossError, RunFolderError, SearchError
from kdsearch.run import RunFolder, RunSettings, StudentFolder


def settings(tmp_path, budget="0.3Mparams", **overrides):
    options = {"data": "digits", "space": "resnet_cifar_s1", "out": tmp_path / "run", "device": "cpu", **overrides}
    return RunSettings.create("tests.test_teacher:tiny_teacher", budget, **options)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"budget": "fast"}, BudgetError, "Could not read the budget"),
        ({"sampler": "tpee"}, SearchError, "Unknown sampler 'tpee'; Did you mean 'tpe'"),
        ({"trials": 0}, KdsearchError, "--trials must be at least 1"),
        ({"latency_batch_size": 0}, KdsearchError, "--latency-batch-size must be at least 1"),
        ({"loss": "kd", "loss_options": {"temperature": "warm"}}, LossError, "temperature needs a float"),
        ({"loss": "kd", "loss_options": {"temp": "2"}}, LossError, "has no setting 'temp'"),
        ({"runtime": "tensorrt"}, KdsearchError, "Unknown runtime 'tensorrt'"),
        ({"latency_model": "maybe"}, KdsearchError, "--latency-model must be one of auto, on, off"),
        ({"top_kk": 3}, KdsearchError, "find has no option 'top_kk'; Did you mean 'top_k'"),
    ],
)
def test_every_option_is_validated_before_any_work(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        settings(tmp_path, **overrides)
    assert not (tmp_path / "run").exists()


def test_settings_round_trip_through_config_yaml(tmp_path):
    original = settings(tmp_path, loss="dkd", loss_options={"beta": "4", "warmup": "2"}, batch_size=32, train_samples=500)
    assert original.loss == {**original.loss, "name": "dkd", "beta": 4.0, "warmup": 2}  # typed once, at the boundary
    text = yaml.safe_dump(original.to_config(), sort_keys=False)
    restored = RunSettings.from_config(yaml.safe_load(text), original.out)
    assert restored.identity() == original.identity()
    assert restored.recipe() == original.recipe() and restored.recipe().batch_size == 32
    assert restored.data == original.data and restored.data.train_samples == 500
    assert restored.space.choices == original.space.choices and restored.budget == original.budget
    from kdsearch.run.options import RECORDED

    # an option declared with setting="record" is a field, written to config.yaml and read back: nothing else to add
    assert {"trials", "top_k", "epochs", "target_epochs", "device", "seed"} <= set(RECORDED)
    assert {name: getattr(restored, name) for name in RECORDED} == {name: getattr(original, name) for name in RECORDED}


def test_run_folder_refuses_what_it_cannot_resume(tmp_path):
    first = settings(tmp_path)
    folder = RunFolder(first.out)
    folder.check_can_start(first)  # a new folder
    first.out.mkdir()
    (first.out / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="already holds files that are not a kdsearch run"):
        folder.check_can_start(first)
    (first.out / "notes.txt").unlink()
    (first.out / "config.yaml").write_text(yaml.safe_dump(first.to_config()))  # as write_start leaves it
    folder.check_can_start(first)  # the same study: resumable
    with pytest.raises(RunFolderError, match="holds a different study \\(budget: '0.3Mparams' there, '0.2Mparams' now\\)"):
        folder.check_can_start(settings(tmp_path, budget="0.2Mparams"))
    with pytest.raises(RunFolderError, match="latency_batch_size"):
        folder.check_can_start(settings(tmp_path, latency_batch_size=4))


def test_runs_written_before_runtimes_still_resume_and_a_new_runtime_is_another_study(tmp_path):
    first = settings(tmp_path, budget="5ms")
    config = first.to_config()
    del config["runtime"], config["latency_model"]  # a config.yaml from before runtimes existed
    first.out.mkdir()
    (first.out / "config.yaml").write_text(yaml.safe_dump(config))
    folder = RunFolder(first.out)
    folder.check_can_start(first)  # eager torch and auto are what those runs did
    assert "runtime" not in first.identity()  # so their storages' identity hashes still match
    with pytest.raises(RunFolderError, match="runtime: 'torch' there, 'torchscript' now"):
        folder.check_can_start(settings(tmp_path, budget="5ms", runtime="torchscript"))


def test_relative_budget_keeps_the_reference_latency_find_measured(tmp_path):
    relative = settings(tmp_path, budget='0.8x:{"family": "resnet_cifar", "depth1": 3, "depth2": 3, "depth3": 3}')
    assert not relative.budget.resolved
    measured = relative.with_reference_latency(2.5)
    restored = RunSettings.from_config(yaml.safe_load(yaml.safe_dump(measured.to_config())), measured.out)
    assert restored.budget.limit == pytest.approx(2.0) and restored.budget.factor == 0.8
    assert restored.identity() == relative.identity()  # the measured figure is not part of what the run is


def test_open_and_records_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunFolderError, match="not a kdsearch run folder"):
        RunFolder.open(tmp_path)
    (tmp_path / "config.yaml").write_text("budget: [unclosed\n")
    with pytest.raises(RunFolderError, match="is unreadable"):
        RunFolder.open(tmp_path).config()
    (tmp_path / "config.yaml").write_text("teacher: resnet18\nbudget: 10ms\n")  # another version's layout
    with pytest.raises(RunFolderError, match="written by another kdsearch version"):
        RunFolder.open(tmp_path).settings()


def test_student_folder_result_marks_done_and_drops_the_checkpoint(tmp_path):
    student = StudentFolder(tmp_path / "s")
    assert not student.has_work() and student.result() is None
    student.checkpoint.parent.mkdir(parents=True)
    student.checkpoint.write_bytes(b"ckpt")
    assert student.has_work()
    student.write_result({"status": "distilled", "val_accuracy": 0.5})
    assert student.result()["val_accuracy"] == 0.5 and not student.checkpoint.exists()


def test_every_option_has_one_source_for_the_cli_the_api_and_the_defaults():
    """kdsearch.run.options.FIND_OPTIONS generates find's flags (with their defaults) and the API's keywords: every
    option parses on the command line to the value the API takes by default."""
    from kdsearch.cli import build_parser
    from kdsearch.run.options import FIND_OPTIONS, find_keywords

    parser = build_parser()
    parsed = vars(parser.parse_args(["find", "--teacher", "t", "--budget", "1ms"]))
    defaults = find_keywords({})
    for option in FIND_OPTIONS:
        expected = [] if option.action == "append" else defaults[option.name]
        if option.name not in ("teacher", "budget"):
            assert parsed[option.name] == expected, option.name
    help_text = parser._subparsers._group_actions[0].choices["find"].format_help()
    assert all(flag in help_text for option in FIND_OPTIONS for flag in option.cli_flags)
    assert "taid" in help_text and "synflow" in help_text and "constrained" in help_text  # listed from the registries
    with_flags = vars(parser.parse_args(["find", "--teacher", "t", "--budget", "1ms", "--top-k", "5", "--no-pretrained",
                                         "--heartbeat", "3", "--loss-opt", "temperature=2", "-q"]))
    assert (with_flags["top_k"], with_flags["pretrained"], with_flags["heartbeat_s"], with_flags["loss_options"],
            with_flags["quiet"]) == (5, False, 3, ["temperature=2"], True)
