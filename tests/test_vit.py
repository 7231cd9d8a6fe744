"""The vit family (timm's VisionTransformer), its weight sharing, and MiniLM's self-attention relation loss."""

import json
import math

import numpy as np
import pytest
import torch

from kdsearch.distill import create_loss
from kdsearch.exceptions import LossError, SpaceError
from kdsearch.spaces import create_model, load_space
from kdsearch.spaces.vit import kept_layers
from kdsearch.supernet.weights import Supernet
from kdsearch.taps import Taps, forward_taps


def _vit(**keys):
    config = {"family": "vit", "depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "head_dim": 32, **keys}
    return create_model(config, num_classes=10, in_chans=1)


def test_a_vit_follows_timm_s_contract_and_its_attention_width_is_heads_times_head_dim(digits_task):
    model = _vit(embed_dim=48, num_heads=3, head_dim=32).eval()
    x, _ = digits_task.sample_batch(4)
    taps = forward_taps(model, x, attention_layer=-1)
    assert taps.prepool.shape == (4, 65, 48) and taps.logits.shape == (4, 10)  # 8x8 patches of 4 px + class token
    assert [a.shape for a in taps.attention] == [(4, 65, 96)] * 3 and taps.attention_heads == 3
    assert torch.allclose(taps.logits, model(x), atol=1e-6)
    assert forward_taps(model, x).attention is None  # read only when asked


def test_a_space_whose_hidden_size_the_heads_cannot_split_is_refused_at_load(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: vit\nchoices:\n  depth: [2]\n  embed_dim: [96, 100]\n  num_heads: [3]\nfixed:\n  head_dim: 0\n")
    with pytest.raises(SpaceError, match="100 is not divisible by 3 heads"):
        load_space(bad)
    with pytest.raises(SpaceError, match="not divisible by its 3 heads"):
        _vit(embed_dim=100, num_heads=3, head_dim=0)


def test_the_space_takes_the_task_s_input_size_unless_it_names_one():
    space = load_space("vit_cifar")
    assert "img_size" not in space.fixed and space.for_input(28).fixed["img_size"] == 28
    assert load_space("resnet_cifar").for_input(28) == load_space("resnet_cifar")


def test_depth_is_shared_spread_out_as_in_autodistil_or_first_as_in_autoformer():
    assert kept_layers(2, 6, "even") == [0, 3] and kept_layers(3, 6, "even") == [0, 2, 4]
    assert kept_layers(4, 6, "first") == [0, 1, 2, 3] and kept_layers(6, 6, "even") == list(range(6))


@pytest.mark.parametrize("rule", ["even", "first"])
def test_an_extracted_vit_subnet_gives_its_path_through_the_supernet_and_cuts_q_k_v_each_by_heads(digits_task, rule):
    space = load_space("vit_cifar").for_input(32)
    supernet = Supernet(space, num_classes=10, in_chans=1).eval()
    x, _ = digits_task.sample_batch(16)
    config = space.config({"depth": 2, "embed_dim": 96, "num_heads": 3, "mlp_ratio": 2.0}) | {"depth_rule": rule}
    student = supernet.extract(config).eval()
    with torch.no_grad():
        assert (supernet(config, x) - student(x)).abs().max().item() <= 1e-5
    source = supernet.shared.blocks[3 if rule == "even" else 1].attn.qkv.weight  # the subnet's second layer
    cut = student.blocks[1].attn.qkv.weight
    width, full = 3 * 32, source.shape[0] // 3  # 3 heads of 32 of the supernet's 4 heads
    for part in range(3):  # Q, K and V: each the first heads of the supernet's own Q, K or V
        assert torch.equal(cut[part * width:(part + 1) * width], source[part * full:part * full + width, :96])


def _manual_relation_kl(s: np.ndarray, t: np.ndarray, heads: int) -> float:
    def rel(x):
        b, n, w = x.shape
        d = w // heads
        x = x.reshape(b, n, heads, d).transpose(0, 2, 1, 3)
        scores = x @ x.transpose(0, 1, 3, 2) / math.sqrt(d)
        scores = scores - scores.max(-1, keepdims=True)
        return np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)

    ps, pt = rel(s), rel(t)
    return float((pt * (np.log(pt) - np.log(ps))).sum(-1).mean())


def test_minilm_relations_match_a_hand_computation_for_different_widths_and_head_counts():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 5, 6, generator=g) for _ in range(3)]  # 6 wide, e.g. 3 heads of 2
    teacher = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]  # 8 wide, 4 heads of 2
    logits = torch.zeros(2, 3)
    s_taps = Taps(logits, logits, logits, True, tuple(student), 3)
    t_taps = Taps(logits, logits, logits, True, tuple(teacher), 4)
    loss = create_loss("minilm", kd_weight=0.0, ce_weight=0.0)
    loss.setup(s_taps, t_taps)
    assert loss.params.relation_heads == 2  # the teacher's 4 heads do not split the student's 6: the largest that does
    got = float(loss(s_taps, t_taps, torch.zeros(2, dtype=torch.long), 0))
    want = sum(_manual_relation_kl(s.numpy(), t.numpy(), 2) for s, t in zip(student, teacher))
    assert got == pytest.approx(want, rel=1e-5) and got > 0
    assert float(loss(t_taps, t_taps, torch.zeros(2, dtype=torch.long), 0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(LossError, match="does not divide"):
        create_loss("minilm", relation_heads=4).setup(s_taps, t_taps)


def test_autodistil_s_variant_is_the_mse_of_the_scores_summed_over_each_side_s_heads():
    g = torch.Generator().manual_seed(1)
    q_s, k_s = torch.randn(1, 4, 6, generator=g), torch.randn(1, 4, 6, generator=g)
    q_t, k_t = torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g)
    logits = torch.zeros(1, 3)
    s_taps = Taps(logits, logits, logits, True, (q_s, k_s, q_s), 3)
    t_taps = Taps(logits, logits, logits, True, (q_t, k_t, q_t), 2)
    loss = create_loss("minilm", variant="autodistil", kd_weight=0.0, ce_weight=0.0)
    loss.setup(s_taps, t_taps)

    def summed(q, k, heads):
        d = q.shape[-1] // heads
        return sum(q[0, :, h * d:(h + 1) * d] @ k[0, :, h * d:(h + 1) * d].T / math.sqrt(d) for h in range(heads))

    want = float(((summed(q_s, k_s, 3) - summed(q_t, k_t, 2)) ** 2).mean())
    assert float(loss(s_taps, t_taps, torch.zeros(1, dtype=torch.long), 0)) == pytest.approx(want, rel=1e-5)


def test_minilm_refuses_a_pair_that_is_not_two_transformers(digits_task):
    x, _ = digits_task.sample_batch(4)
    vit = _vit().eval()
    resnet = create_model({"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1}, num_classes=10, in_chans=1)
    with pytest.raises(Exception, match="no transformer layers"):
        forward_taps(resnet, x, attention_layer=-1)
    loss = create_loss("minilm")
    with pytest.raises(LossError, match="must both be transformers"):
        loss.setup(forward_taps(vit, x, -1), forward_taps(resnet, x))


def test_minilm_distils_a_vit_student_from_a_vit_teacher_on_real_images(digits_task):
    from kdsearch.distill import distill
    from kdsearch.training import Recipe

    torch.manual_seed(0)
    teacher, student = _vit(embed_dim=64, num_heads=2), _vit(embed_dim=48, num_heads=3, head_dim=16)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = distill(student, teacher, digits_task, Recipe(epochs=1, batch_size=128), loss="minilm")
    assert math.isfinite(result.history[-1]["loss"]) and result.history[-1]["loss"] > 0
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


VIT_TEACHER = '{"family": "vit", "depth": 3, "embed_dim": 96, "num_heads": 3, "head_dim": 32}'
RESNET_TEACHER = '{"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1}'


def _find(out, *extra, teacher=VIT_TEACHER, space="vit_cifar"):
    from kdsearch.cli import main

    return main([str(a) for a in ["find", "--teacher", teacher, "--teacher-epochs", 2, "--space", space, "--budget",
                                  "0.4Mparams", "--trials", 6, "--top-k", 1, "--front", 0, "--controls", 0, "--epochs", 1,
                                  "--select", "proxy", "--val-samples", 200, "--out", out, "-q", *extra]])


def test_find_distils_vit_students_with_minilm_and_exports_one_that_onnx_runtime_matches(tmp_path, capsys):
    import pandas as pd
    import yaml

    from kdsearch.cli import main

    assert _find(tmp_path / "run", "--loss", "minilm") == 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["loss"]["name"] == "minilm" and config["loss"]["relation_heads"] == 0  # 0: the teacher's head count
    assert config["space_record"]["fixed"]["img_size"] == 32  # the digits' input size, set by find
    table = pd.read_csv(tmp_path / "run" / "candidates.csv")
    done = table[table["distilled_accuracy"].notna()]
    assert len(done) == 1 and (table["params"] <= 400_000).sum() >= 1
    result = json.loads((tmp_path / "run" / "students" / done.iloc[0]["candidate_id"] / "result.json").read_text())
    assert result["recipe"]["optimizer"] == "adamw" and result["recipe"]["weight_decay"] == 0.05  # the family's own
    capsys.readouterr()
    pytest.importorskip("onnxruntime")
    assert main(["export", str(tmp_path / "run"), "--best", "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    out = capsys.readouterr().out
    assert float(out.rsplit("max abs diff", 1)[1].strip().strip(":").strip()) < 1e-4


@pytest.mark.parametrize("teacher, space, message", [
    (RESNET_TEACHER, "vit_cifar", "the teacher (CifarResNet) is not a transformer"),
    (VIT_TEACHER, "resnet_cifar_s1", "students of space resnet_cifar_s1 (family resnet_cifar) are not transformers"),
])
def test_minilm_without_two_transformers_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, teacher, space, message):
    assert _find(tmp_path / "run", "--loss", "minilm", teacher=teacher, space=space) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_deit_hard_label_distillation_is_half_labels_half_the_teacher_s_argmax():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    teacher = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1])
    s, t = Taps(logits, logits, logits, True), Taps(teacher, teacher, teacher, True)
    log_p = torch.log_softmax(logits, 1)
    want = 0.5 * -log_p[[0, 1], [0, 1]].mean() + 0.5 * -log_p[[0, 1], [1, 2]].mean()
    assert float(create_loss("deit_hard")(s, t, labels, 0)) == pytest.approx(float(want), rel=1e-6)


def test_a_supernet_starts_from_a_larger_vit_teacher_s_own_weights_sliced_and_not_from_a_mismatched_one(tmp_path):
    space_file = tmp_path / "tiny_vit.yaml"
    space_file.write_text("family: vit\nchoices:\n  depth: [1, 2]\n  embed_dim: [32, 48]\n  num_heads: [1, 2]\n"
                          "  mlp_ratio: [2.0]\nfixed:\n  head_dim: 16\n  img_size: 32\n")
    space = load_space(space_file)
    teacher = _vit(depth=4, embed_dim=64, num_heads=4, head_dim=16)
    supernet = Supernet(space, num_classes=10, in_chans=1)
    assert supernet.start_from(teacher)
    shared, t = supernet.shared, teacher
    q_rows = 2 * 16  # the supernet's 2 heads of 16 of the teacher's 4
    for part in range(3):
        assert torch.equal(shared.blocks[1].attn.qkv.weight[part * q_rows:(part + 1) * q_rows],
                           t.blocks[2].attn.qkv.weight[part * 64:part * 64 + q_rows, :48])  # layer 2 of 4: spread out
    assert torch.equal(shared.pos_embed, t.pos_embed[..., :48]) and torch.equal(shared.head.weight, t.head.weight[:, :48])
    assert torch.equal(shared.blocks[0].mlp.fc1.weight, t.blocks[0].mlp.fc1.weight[:96, :48])
    fresh = Supernet(space, num_classes=10, in_chans=1)
    before = {k: v.clone() for k, v in fresh.shared.state_dict().items()}
    assert not fresh.start_from(_vit(depth=4, embed_dim=64, num_heads=2, head_dim=32))  # heads of another width
    assert not fresh.start_from(_vit(depth=1, embed_dim=64, num_heads=4, head_dim=16))  # shallower than the supernet
    assert not fresh.start_from(create_model({"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1},
                                             num_classes=10, in_chans=1))
    assert all(torch.equal(before[k], v) for k, v in fresh.shared.state_dict().items())


def test_a_vit_supernet_learns_the_vit_teacher_s_relations_and_a_cnn_supernet_only_its_logits(digits_task, tmp_path,
                                                                                                 monkeypatch, caplog):
    from kdsearch.supernet import SandwichRule, prepare_supernets
    from kdsearch.supernet import train as train_module
    from kdsearch.training import Recipe

    space_file = tmp_path / "tiny_vit.yaml"
    space_file.write_text("family: vit\nchoices:\n  depth: [1, 2]\n  embed_dim: [32, 48]\n  num_heads: [1, 2]\n"
                          "  mlp_ratio: [2.0]\nfixed:\n  head_dim: 16\n  img_size: 32\n")
    space = load_space(space_file)
    teacher = _vit(depth=3, embed_dim=64, num_heads=4, head_dim=16).eval()
    real_step, seen = train_module._sandwich_step, []

    def recording(*args, **kwargs):
        relations = args[10] if len(args) > 10 else kwargs.get("relations")
        seen.append(relations)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "_sandwich_step", recording)
    with caplog.at_level("INFO", logger="kdsearch.supernet"):
        prepare_supernets(space, digits_task, teacher, bands=1, recipe=Recipe(epochs=1, batch_size=256),
                          latency={"max_time_s": 0.05, "min_repeats": 3, "warmup_s": 0.0}, root=tmp_path / "sn")
    assert seen and all(r is not None and r.attention_heads == 4 for r in seen)
    assert "starts from the teacher's own weights" in caplog.text
    student = _vit(embed_dim=32, num_heads=1, head_dim=16)
    assert SandwichRule().resolved(student, teacher).to_dict()["objective"] == "relations+kd"
    resnet = create_model({"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1}, num_classes=10, in_chans=1)
    assert SandwichRule().resolved(student, resnet).objective == "kd" and SandwichRule().resolved(resnet, teacher).objective == "kd"
    assert "objective" not in SandwichRule().resolved(student, resnet).to_dict()  # CNN supernets keep their cache keys


def test_a_proxy_that_cannot_rank_transformers_is_said_in_one_sentence():
    from kdsearch.pipeline.stages import proxy_notes

    assert proxy_notes(["meco"], ["vit"]) and len(proxy_notes(["params+meco"], ["resnet_cifar", "vit"])) == 1
    assert proxy_notes(["meco"], ["resnet_cifar"]) == [] and proxy_notes(["params"], ["vit"]) == []


def test_find_ranks_vit_students_with_the_task_agnostic_superlm_from_the_cli(tmp_path):
    """--supernet-objective relations: the relations alone, then the shared fine-tune epoch, recorded in the run."""
    import pandas as pd
    import yaml

    space = tmp_path / "tiny_vit.yaml"  # (vit_cifar's largest subnet would make this a minute)
    space.write_text("family: vit\nchoices:\n  depth: [1, 2]\n  embed_dim: [32, 48]\n  num_heads: [1, 2]\n"
                     "  mlp_ratio: [2.0]\nfixed:\n  head_dim: 32\n")
    assert _find(tmp_path / "run", "--proxy", "supernet", "--supernet-objective", "relations", "--supernet-epochs", 1,
                 "--subspaces", 1, space=space) == 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["supernet"]["objective"] == "relations"
    histories = list((tmp_path / "run" / "supernet").rglob("history*.json"))
    assert histories and [h["objective"] for h in json.loads(histories[0].read_text())] == ["relations", "kd"]
    table = pd.read_csv(tmp_path / "run" / "candidates.csv")
    assert table["proxy_supernet"].between(0, 1).all() and table["distilled_accuracy"].notna().any()
