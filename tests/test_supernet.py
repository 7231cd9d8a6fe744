"""Weight-shared supernets: subnets cut from shared weights, latency bands, sandwich KD training, the supernet proxy."""

import json

import pytest
import torch
import torch.nn.functional as F

from kdsearch.exceptions import SpaceError
from kdsearch.similarity import kl_div_t
from kdsearch.spaces import create_model, load_space
from kdsearch.supernet import LatencyBands, SandwichRule, Supernet, carve_holdout, prepare_supernets, recalibrate
from kdsearch.supernet.bands import BandPool
from kdsearch.supernet.weights import cut
from kdsearch.training import Recipe

FAST_LATENCY = {"max_time_s": 0.05, "min_repeats": 3, "warmup_s": 0.0}
# A small nested space for training tests: the full resnet_cifar's largest subnet is ~1 s per step even on 8x8 digits.
TINY_SPACE = """family: resnet_cifar
choices:
  depth1: [1, 2]
  depth2: [1, 2]
  depth3: [1, 2]
  width1: [8, 16]
  width2: [16, 32]
  width3: [32, 64]
"""


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory):
    path = tmp_path_factory.mktemp("spaces") / "tiny_resnet.yaml"
    path.write_text(TINY_SPACE)
    return path


def _cifar_batch(cifar_folder, size: int, n: int = 6) -> torch.Tensor:
    from kdsearch.data import load_task

    x, _ = load_task(str(cifar_folder)).sample_batch(n)
    return x if size == 32 else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("family, size", [("resnet_cifar", 32), ("nasbench201", 32), ("mobilenetv3", 72)])
def test_a_subnet_on_shared_weights_is_the_extracted_plain_module(family, size, cifar_folder):
    torch.manual_seed(0)
    space = load_space(family)
    supernet = Supernet(space, num_classes=10, in_chans=3)
    for p in supernet.parameters():  # random weights everywhere, so that a wrong cut would show
        torch.nn.init.normal_(p, std=0.05)
    x = _cifar_batch(cifar_folder, size)
    for config in space.sample(3, seed=4):
        plain = supernet.extract(config).eval()
        assert type(plain) is type(create_model(config, num_classes=10))  # every other stage sees a normal module
        torch.testing.assert_close(supernet.eval()(config, x), plain(x), rtol=0, atol=0)


def test_cut_takes_leading_channels_and_the_kernel_centre():
    weight = torch.arange(2 * 3 * 7 * 7, dtype=torch.float32).view(2, 3, 7, 7)
    small = cut(weight, torch.Size([1, 2, 3, 3]))
    assert torch.equal(small, weight[:1, :2, 2:5, 2:5])
    assert small.data_ptr() != weight.data_ptr() or small.storage_offset() > 0  # a view into the shared tensor
    with pytest.raises(SpaceError, match="cannot be cut"):
        cut(weight, torch.Size([4, 3, 7, 7]))


def test_training_a_subnet_moves_only_its_own_slice_of_the_shared_weights(digits_task):
    space = load_space("resnet_cifar")
    supernet = Supernet(space, num_classes=10, in_chans=1).train()
    small = space.config({"depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32})
    x, y = digits_task.sample_batch(16)
    F.cross_entropy(supernet(small, x), y).backward()
    grads = dict(supernet.shared.named_parameters())
    assert grads["stages.2.0.conv1.weight"].grad[:32, :16].abs().sum() > 0
    assert grads["stages.2.0.conv1.weight"].grad[32:].abs().sum() == 0  # channels the subnet does not have
    assert grads["stages.2.1.conv1.weight"].grad is None  # a block beyond its depth


def test_the_supernet_of_a_family_without_a_sharing_rule_is_refused():
    with pytest.raises(SpaceError, match="weight-sharing family"):
        Supernet(load_space("timm_zoo"), num_classes=10, in_chans=3)


def test_recalibration_sets_batchnorm_statistics_from_the_data(digits_task):
    space = load_space("resnet_cifar")
    model = Supernet(space, 10, 1).extract(space.config({"depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32}))
    x, _ = digits_task.sample_batch(128)
    recalibrate(model, [x[:64], x[64:]])
    assert not model.training
    with torch.no_grad():
        stem = model.conv1(x)
    torch.testing.assert_close(model.bn1.running_mean, stem.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_bands_cut_the_timed_sample_at_its_quantiles(digits_task):
    from kdsearch.supernet import measure_bands

    space = load_space("resnet_cifar")
    bands = measure_bands(space, digits_task, 3, device=torch.device("cpu"), latency=FAST_LATENCY, sample_size=12)
    times = sorted(r["latency_ms"] for r in bands.sample)
    assert len(bands.edges) == 2 and times[0] <= bands.edges[0] <= bands.edges[1] <= times[-1]
    assert [bands.band_of(t) for t in (0.0, bands.edges[0] * 0.999, bands.edges[1] * 1.001)] == [0, 0, 2]
    assert bands.bands_below(bands.edges[0] * 0.5) == [0] and bands.bands_below(None) == [0, 1, 2]
    pool = BandPool(space, bands)
    assert sum(len(m) for m in pool.members.values()) == space.size  # 4,096 candidates: all placed
    largest, smallest, *randoms = pool.sandwich(1, torch.Generator().manual_seed(0))
    predicted = dict(zip(map(json.dumps, pool.configs), pool.predicted_ms))
    assert predicted[json.dumps(largest)] >= predicted[json.dumps(smallest)] and len(randoms) == 2
    # span anchors: the band's own largest and smallest config, key by key, around every member of the band
    top, bottom, *randoms = pool.sandwich(1, torch.Generator().manual_seed(0), anchors="span")
    members = [pool.configs[i] for i in pool.members[1]]
    for key in space.choices:
        assert top[key] == max(c[key] for c in members) and bottom[key] == min(c[key] for c in members)
    assert top != largest or bottom != smallest  # not the latency extremes (the band mixes deep-narrow and wide-shallow)
    assert len(pool.sandwich(1, torch.Generator().manual_seed(0), 4, anchors="uniform")) == 4
    with pytest.raises(ValueError, match="anchors"):
        SandwichRule(anchors="middle")
    with pytest.raises(ValueError, match="largest subnet"):
        SandwichRule(anchors="uniform", inplace=True)
    assert "anchors" not in SandwichRule().to_dict() and SandwichRule(anchors="span").to_dict()["anchors"] == "span"


def test_the_hold_out_slice_comes_from_the_training_images(digits_task):
    carved = carve_holdout(digits_task, seed=0)
    assert len(carved.train_labels) + len(carved.val_labels) == len(digits_task.train_labels)
    train_rows = {bytes(r.numpy()) for r in digits_task.train_images}
    assert all(bytes(r.numpy()) in train_rows for r in carved.val_images)
    assert torch.bincount(carved.val_labels, minlength=10).min() >= len(carved.val_labels) // 10 - 1  # balanced


@pytest.fixture(scope="module")
def teacher(digits_task):
    """A small teacher trained on digits for a few epochs (real knowledge to distil)."""
    from kdsearch.training import fit

    torch.manual_seed(0)
    model = create_model({"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1}, num_classes=10, in_chans=1)
    fit(model, digits_task, Recipe(epochs=6, batch_size=64, lr=0.05))
    return model.eval()


def test_supernets_train_by_band_resume_after_a_kill_and_are_reused(digits_task, teacher, tiny_space, tmp_path, monkeypatch):
    from kdsearch.supernet import train as train_module

    space = load_space(tiny_space)
    recipe = Recipe(epochs=2, batch_size=64, lr=0.05)
    kwargs = dict(bands=2, limit_ms=None, recipe=recipe, latency=FAST_LATENCY, root=tmp_path)
    real_step, calls = train_module._sandwich_step, []

    def dies_in_epoch_two(*args, **kw):
        calls.append(1)
        if len(calls) > 22:  # digits: 22 steps of 64 per epoch; the kill lands early in the second epoch
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    monkeypatch.setattr(train_module, "_sandwich_step", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        prepare_supernets(space, digits_task, teacher, **kwargs)
    checkpoints = list(tmp_path.glob("*/*/band0/training_state.pt"))
    assert len(checkpoints) == 1 and torch.load(checkpoints[0], weights_only=True)["history"][0]["epoch"] == 1
    monkeypatch.setattr(train_module, "_sandwich_step", real_step)
    ranker = prepare_supernets(space, digits_task, teacher, **kwargs)
    assert sorted(ranker.supernets) == [0, 1] and [h["epoch"] for h in ranker.histories[0]] == [1, 2]
    assert not list(tmp_path.glob("*/*/band*/training_state.pt"))  # done: weights.safetensors replaces the checkpoint
    # the band's largest subnet learnt from the teacher: well above chance (10 %) with inherited weights after 2
    # epochs (0.43-0.60 in repeated runs: which subnet is the band's largest depends on the timed bands)
    assert ranker.histories[0][-1]["holdout_accuracy_largest"] > 0.3
    config = ranker.bands.sample[0]["config"]
    scored = ranker.evaluate(config, ranker.bands.sample[0]["latency_ms"])
    assert 0.0 <= scored["accuracy"] <= 1.0 and scored["kd_loss"] > 0
    # a second call with the same inputs trains nothing and scores the same
    monkeypatch.setattr(train_module, "_sandwich_step", lambda *a, **k: pytest.fail("trained again"))
    again = prepare_supernets(space, digits_task, teacher, **kwargs)
    assert again.evaluate(config, ranker.bands.sample[0]["latency_ms"]) == scored


def test_only_bands_that_hold_candidates_within_the_limit_are_trained(digits_task, teacher, tiny_space, tmp_path):
    space = load_space(tiny_space)
    bands = LatencyBands([1.0, 2.0])
    assert bands.bands_below(0.5) == [0] and bands.bands_below(1.5) == [0, 1]
    ranker = prepare_supernets(space, digits_task, teacher, bands=3, limit_ms=1e-6,
                               recipe=Recipe(epochs=1, batch_size=64), latency=FAST_LATENCY, root=tmp_path)
    assert sorted(ranker.supernets) == [0]
    assert ranker.band_for({}, 1e9) == 0  # a candidate of an untrained band is scored by the nearest trained one


def _find(out, space, *extra):
    return ["find", "--teacher", "tests.test_teacher:tiny_teacher", "--budget", "0.1Mparams", "--data", "digits",
            "--space", str(space), "--proxy", "supernet,params", "--subspaces", "2", "--supernet-epochs", "1",
            "--trials", "8", "--top-k", "1", "--front", "0", "--controls", "0", "--epochs", "1", "--teacher-epochs", "3",
            "--val-samples", "300", "--out", str(out), "-q", *extra]


def test_find_ranks_with_the_supernet_and_warm_starts_from_the_cli(tiny_space, tmp_path, capsys):
    import pandas as pd

    from kdsearch.cli import main

    out = tmp_path / "run"
    assert main(_find(out, tiny_space, "--warm-start")) == 0
    record = json.loads((out / "supernet" / "bands.json").read_text())
    assert record["trained"] == [0, 1] and len(record["edges_ms"]) == 1  # a parameter budget: every band can fit
    assert all((out / "supernet" / f"band{b}" / name).exists() for b in (0, 1) for name in ("history.json", "weights.safetensors"))
    df = pd.read_csv(out / "candidates.csv")
    assert df["proxy_supernet"].between(0, 1).all() and df["proxy_supernet"].nunique() > 1
    assert df.iloc[0]["proxy_supernet"] == df["proxy_supernet"].max()  # it ranks the table
    student = df[df["distilled_accuracy"].notna()].iloc[0]
    result = json.loads((out / "students" / student["candidate_id"] / "result.json").read_text())
    assert result["warm_start"] is True
    capsys.readouterr()
    assert main(_find(out, tiny_space, "--warm-start")) == 0  # resumed: nothing trained or scored again
    assert pd.read_csv(out / "candidates.csv")["proxy_supernet"].tolist() == df["proxy_supernet"].tolist()


def test_the_sandwich_anchors_reach_the_supernets_from_the_cli_and_the_api(tiny_space, monkeypatch):
    import importlib

    from kdsearch.cli import build_parser
    from kdsearch.exceptions import KdsearchError
    from kdsearch.run import RunSettings

    stages = importlib.import_module("kdsearch.pipeline.stages")

    rules = []
    monkeypatch.setattr(stages, "prepare_supernets", lambda *a, rule, **k: rules.append(rule))
    args = build_parser().parse_args(_find("run", tiny_space, "--supernet-anchors", "uniform"))
    assert args.supernet_anchors == "uniform"
    for anchors, random_subnets in (("span", 2), ("uniform", 4), ("latency", 2)):
        settings = RunSettings.create("resnet18", "1ms", proxy="supernet", space=str(tiny_space), supernet_anchors=anchors)
        stages.run_supernets(settings, None, None)
        assert (rules[-1].anchors, rules[-1].random_subnets) == (anchors, random_subnets)
        # the default stays out of config.yaml, so runs made before the option still resume
        assert settings.supernet.get("anchors") == (None if anchors == "latency" else anchors)
    with pytest.raises(KdsearchError, match="--supernet-anchors must be one of"):
        RunSettings.create("resnet18", "1ms", proxy="supernet", space=str(tiny_space), supernet_anchors="middle")


@pytest.mark.parametrize("extra, message", [
    (["--proxy", "params", "--warm-start"], "--warm-start starts each student"),
    (["--space", "timm_zoo"], "weight-sharing family"),
    (["--supernet-objective", "relations"], "--supernet-objective: The supernet objective relations distils self-attention"),
])
def test_supernet_options_that_cannot_work_are_one_line_and_exit_2(tiny_space, tmp_path, capsys, extra, message):
    from kdsearch.cli import main

    args = _find(tmp_path / "bad", tiny_space, *extra)  # a repeated option: argparse keeps the last
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


TINY_SPACES = {
    "vit": """family: vit
choices:
  depth: [1, 2]
  embed_dim: [32, 48]
  num_heads: [1, 2]
  mlp_ratio: [2.0]
fixed:
  head_dim: 16
""",
    "nasbench201": """family: nasbench201
choices:
  edge_1_0: [none, skip_connect, nor_conv_3x3]
  edge_2_0: [skip_connect, nor_conv_1x1]
  edge_2_1: [none, nor_conv_3x3]
  edge_3_0: [skip_connect, avg_pool_3x3]
  edge_3_1: [none, nor_conv_1x1]
  edge_3_2: [none, skip_connect, nor_conv_3x3]
fixed:
  channels: 8
  cells_per_stage: 1
""",
    "mobilenetv3": """family: mobilenetv3
resolution: [65, 100000]
choices:
  width_mult: [0.5]
  depth1: [2, 3]
  depth2: [2]
  depth3: [2]
  depth4: [2]
  depth5: [2, 3]
  kernel1: [3, 5]
  kernel2: [3]
  kernel3: [3]
  kernel4: [3]
  kernel5: [3, 7]
  expand1: [3, 4]
  expand2: [3]
  expand3: [3]
  expand4: [3]
  expand5: [3, 6]
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("family, data", [("nasbench201", "cifar"), ("mobilenetv3", "fashion"), ("vit", "cifar")])
def test_find_with_the_supernet_on_real_image_data_for_each_family(family, data, tmp_path, capsys, request):
    """The vit run searches a space that declares two subspaces: a supernet each (AutoDistil's partition)."""
    import pandas as pd

    from kdsearch.cli import main

    space = tmp_path / f"tiny_{family}.yaml"
    space.write_text(TWO_SUBSPACES if family == "vit" else TINY_SPACES[family])
    source = ([str(request.getfixturevalue("cifar_folder")), "--val-samples", "100"] if data == "cifar"
              else ["fashion-mnist", "--data-root", str(request.getfixturevalue("fashion_available")), "--train-samples", "400",
                    "--input-size", "72"])
    args = _find(tmp_path / "run", space, "--data", *source, "--budget", "10Mparams", "--trials", "6")
    assert main(args) == 0, capsys.readouterr().err
    df = pd.read_csv(tmp_path / "run" / "candidates.csv")
    assert df["proxy_supernet"].between(0, 1).all() and df["distilled_accuracy"].notna().any()
    bands = json.loads((tmp_path / "run" / "supernet" / "bands.json").read_text())
    if family == "vit":
        assert bands["subspaces"] == [f"tiny_vit.{name}" for name in ("narrow", "wide")] and len(bands["trained"]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_supernets_train_with_amp_and_score_on_cuda_as_on_the_cpu(digits_task, teacher, tiny_space, tmp_path, amp):
    space = load_space(tiny_space)
    recipe = Recipe(epochs=2, batch_size=64, lr=0.05, amp=amp)
    ranker = prepare_supernets(space, digits_task, teacher, bands=1, recipe=recipe, latency=FAST_LATENCY,
                               device="cuda", root=tmp_path)
    supernet = ranker.supernets[0]
    assert all(p.is_cuda for p in supernet.parameters()) and all(torch.isfinite(p).all() for p in supernet.parameters())
    assert ranker.histories[0][-1]["holdout_accuracy_largest"] > 0.3  # fp16 without loss scaling learnt nothing
    sample = ranker.bands.sample[0]
    on_cuda = ranker.evaluate(sample["config"], sample["latency_ms"])
    # the same inherited weights scored on the CPU: the ranking signal does not depend on where it was computed
    plain = ranker.subnet(sample["config"], sample["latency_ms"]).float().cpu().eval()
    x = torch.cat([x for x, _ in ranker.task.batches("val", 256)])
    with torch.no_grad():
        cpu_accuracy = float((plain(x).argmax(1) == ranker.task.val_labels).float().mean())
    assert abs(cpu_accuracy - on_cuda["accuracy"]) <= 0.01
    # the shared-weight forward on CUDA is the extracted module's forward
    with torch.no_grad():
        torch.testing.assert_close(supernet.eval()(sample["config"], x[:32].cuda()), supernet.extract(sample["config"]).eval()(x[:32].cuda()),
                                   rtol=1e-4, atol=1e-4)


def test_a_vit_supernet_step_runs_the_largest_the_smallest_and_two_random_subnets_then_steps_once(digits_task, teacher, tmp_path,
                                                                                                    monkeypatch):
    """The sandwich rule on transformers (AutoDistil's: largest, smallest, 2 random, one optimiser step)."""
    from kdsearch.supernet import train as train_module

    space_file = tmp_path / "tiny_vit.yaml"
    space_file.write_text(TINY_SPACES["vit"])
    space = load_space(space_file).for_input(digits_task.input_shape[1])
    real_step, steps = train_module._sandwich_step, []

    def recording(supernet, configs, *args, **kwargs):
        before = {k: v.detach().clone() for k, v in supernet.shared.state_dict().items()}
        value = real_step(supernet, configs, *args, **kwargs)
        changed = any(not torch.equal(before[k], v) for k, v in supernet.shared.state_dict().items())
        steps.append(([json.dumps(c, sort_keys=True) for c in configs], changed))
        return value

    monkeypatch.setattr(train_module, "_sandwich_step", recording)
    ranker = prepare_supernets(space, digits_task, teacher, bands=1, limit_ms=None, recipe=Recipe(epochs=1, batch_size=256),
                               latency=FAST_LATENCY, root=tmp_path / "sn")
    assert steps and all(len(configs) == 4 and changed for configs, changed in steps)
    assert len({configs[0] for configs, _ in steps}) == 1 and len({configs[1] for configs, _ in steps}) == 1  # anchors
    assert len({c for configs, _ in steps for c in configs[2:]}) > 1  # the random two vary from step to step
    config = json.loads(steps[0][0][0])
    x, _ = digits_task.sample_batch(8)
    supernet = ranker.supernets[0].eval()
    with torch.no_grad():
        assert (supernet(config, x) - supernet.extract(config).eval()(x)).abs().max().item() <= 1e-5


TWO_SUBSPACES = """family: vit
fixed:
  head_dim: 16
  mlp_ratio: 2.0
subspaces:
  narrow:
    depth: [1, 2]
    embed_dim: [16, 24]
    num_heads: [1]
  wide:
    depth: [2, 3]
    embed_dim: [48, 64]
    num_heads: [2, 3]
"""


def test_a_space_that_declares_subspaces_gets_one_supernet_each_and_a_candidate_is_scored_by_its_own(digits_task, teacher,
                                                                                                     tmp_path):
    """AutoDistil's hand partition: K supernets, one per declared subspace, instead of latency bands."""
    space_file = tmp_path / "two.yaml"
    space_file.write_text(TWO_SUBSPACES)
    space = load_space(space_file).for_input(digits_task.input_shape[1])
    assert space.name == "two" and [p.name for p in space.parts] == ["two.narrow", "two.wide"] and space.size == 4 + 8
    assert load_space(f"{space_file}.wide").choices["num_heads"] == [2, 3]  # one subspace alone: name.part
    kwargs = dict(recipe=Recipe(epochs=1, batch_size=256), latency=FAST_LATENCY, root=tmp_path / "sn")
    ranker = prepare_supernets(space, digits_task, teacher, limit_ms=None, **kwargs)
    assert sorted(ranker.supernets) == [0, 1] and ranker.record()["subspaces"] == ["two.narrow", "two.wide"]
    assert ranker.supernets[0].space.name == "two.narrow" and ranker.supernets[1].space.name == "two.wide"
    wide = space.parts[1].config({"depth": 3, "embed_dim": 64, "num_heads": 3})
    assert ranker.evaluate(wide, 0.0)["band"] == 1  # by the subspace that holds it, whatever its latency
    assert ranker.evaluate(space.parts[0].config({"depth": 1, "embed_dim": 16, "num_heads": 1}), 1e9)["band"] == 0
    assert set(ranker.weights_files()) == {0, 1} and all(p.exists() for p in ranker.weights_files().values())
    # a budget no member of the wide subspace meets trains only the narrow one (the fastest subspace is always kept)
    # (its smallest member timed) — a candidate of the untrained one (over the budget, so never a finalist) is scored
    # as a model that knows nothing: uniform logits
    narrow_fastest, wide_fastest = ranker.bands.fastest_ms[0], ranker.bands.fastest_ms[1]
    if narrow_fastest < wide_fastest:  # timing noise could order them otherwise on a loaded machine
        limited = prepare_supernets(space, digits_task, teacher, limit_ms=(narrow_fastest + wide_fastest) / 2, **kwargs)
        assert sorted(limited.supernets) == [0]
        scored, labels = limited.evaluate(wide, 0.0), limited.task.val_labels
        assert scored["band"] is None and scored["accuracy"] == pytest.approx(float((labels == 0).float().mean()))
        uniform = torch.zeros_like(limited.teacher_logits)
        assert scored["kd_loss"] == pytest.approx(float(kl_div_t(uniform, limited.teacher_logits, limited.temperature)))
        with pytest.raises(SpaceError, match="no trained supernet"):
            limited.subnet(wide, 0.0)
        from kdsearch.pipeline.records import TOP, Finalist
        from kdsearch.pipeline.students import inherited  # --warm-start: such a finalist starts cold, said in one line

        assert inherited(limited, Finalist("w", wide, TOP, True, {"latency_p50_ms": 0.0})) is None
        narrow = space.parts[0].config({"depth": 1, "embed_dim": 16, "num_heads": 1})
        assert inherited(limited, Finalist("n", narrow, TOP, True, {"latency_p50_ms": 0.0})) is not None


def test_the_task_agnostic_objective_learns_the_relations_alone_then_fine_tunes_every_subnet_on_logits(digits_task,
                                                                                                         tmp_path, monkeypatch):
    """AutoDistil's SuperLM: self-attention relations only (no labels, no logits), then a short shared fine-tune."""
    from kdsearch.supernet import train as train_module

    space_file = tmp_path / "tiny_vit.yaml"
    space_file.write_text(TINY_SPACES["vit"])
    space = load_space(space_file).for_input(digits_task.input_shape[1])
    torch.manual_seed(0)
    teacher = create_model(space.config({"depth": 2, "embed_dim": 48, "num_heads": 2, "mlp_ratio": 2.0}),
                           num_classes=10, in_chans=1).eval()
    rule = SandwichRule(objective="relations", finetune_epochs=1)
    assert rule.phases(2) == [("relations", 0), ("relations", 1), ("kd", 0)]
    assert rule.to_dict()["objective"] == "relations" and rule.to_dict()["finetune_epochs"] == 1
    seen, real_step = [], train_module._sandwich_step  # (the step's objective, whether it got the teacher's Q/K/V)
    monkeypatch.setattr(train_module, "_sandwich_step", lambda *a, **k: seen.append((a[5].objective, a[10] is not None))
                        or real_step(*a, **k))
    ranker = prepare_supernets(space, digits_task, teacher, bands=1, recipe=Recipe(epochs=1, batch_size=256),
                               rule=rule, latency=FAST_LATENCY, root=tmp_path / "sn")
    history = ranker.histories[0]
    assert [h["objective"] for h in history] == ["relations", "kd"]
    relation_steps = [s for s in seen if s[0] == "relations"]
    assert relation_steps and all(with_teacher for _, with_teacher in relation_steps)  # the teacher's Q/K/V each step
    assert [s for s in seen if s[0] == "kd"] and not any(with_teacher for o, with_teacher in seen if o == "kd")
    scored = ranker.evaluate(space.sample(1, seed=0)[0], 0.0)
    assert 0.0 <= scored["accuracy"] <= 1.0 and scored["kd_loss"] > 0
    with pytest.raises(ValueError, match="transformer teacher and transformer students"):
        SandwichRule(objective="relations").resolved(teacher, torch.nn.Linear(2, 2))
