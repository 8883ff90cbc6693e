from __future__ import annotations

import pytest
import torch
from conftest import shared_path

from atbsn import ATBSN, Student
from atbsn.checkpoint import load, read_metadata, save
from atbsn.config import ModelConfig
from atbsn.errors import AtbsnError


@pytest.mark.parametrize("make", [lambda: ATBSN(width=8), lambda: Student("A"), lambda: Student("C", in_channels=1)])
def test_round_trip_keeps_weights_and_config(tmp_path, make):
    model = make().eval()
    model.config.train_crop = 64
    model.config.training = {"steps": 10}
    path = save(model, tmp_path / "m.safetensors")
    back = load(path)
    assert type(back) is type(model) and back.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert ModelConfig.from_json(read_metadata(path)["config"]) == model.config


def test_atbsn_d_file_gives_the_student_and_the_teacher_on_request():
    d = shared_path("fixtures", "official")
    assert load(d / "atbsn_d_official_format.pth").config.arch == "C"
    teacher = load(d / "atbsn_d_official_format.pth", part="teacher")
    direct = load(d / "atbsn_official_format.pth")
    for a, b in zip(teacher.state_dict().values(), direct.state_dict().values()):
        assert torch.equal(a, b)


def test_aprrd_student_knows_its_input_scale():
    path = shared_path("fixtures", "pretrained", "aprrd_student_c_sidd_medium.pth")
    net = load(path)
    assert net.config.arch == "C" and net.config.value_range == 1.0
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        raw = net.unet(x / 255.0) * 255.0
        assert torch.allclose(net(x), raw)


def test_module_prefix_and_state_dict_wrapper_are_accepted(tmp_path):
    model = Student("A")
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    assert load(tmp_path / "w.pth").config.arch == "A"


def test_bad_files_give_one_clear_line(tmp_path):
    save(ATBSN(width=8), tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    torch.save(Student("A").state_dict(), tmp_path / "a.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "a.pth").read_bytes()[:500])
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "unknown.pth")
    (tmp_path / "text.pth").write_text("hello")
    bad_shape = {k: v[:1] for k, v in Student("A").state_dict().items()}
    torch.save(bad_shape, tmp_path / "shape.pth")
    for name, pattern in [
        ("cut.safetensors", "truncated or corrupt|not a readable"),
        ("cut.pth", "truncated or corrupt"),
        ("unknown.pth", "unknown checkpoint layout"),
        ("text.pth", "not a readable"),
        ("shape.pth", "do not fit"),
        ("missing.pth", "not found"),
    ]:
        with pytest.raises(AtbsnError, match=pattern) as info:
            load(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(AtbsnError, match="no teacher"):
        load(tmp_path / "a.pth", part="teacher")


@pytest.mark.parametrize("make", [lambda: ATBSN(width=8), lambda: Student("A"), lambda: Student("C", width=8)])
def test_models_come_ready_to_run_fast_built_or_loaded(tmp_path, make):
    """Channels-last weights (the fast layout) from construction and from load(); NCHW input still works."""
    model = make()
    back = load(save(model, tmp_path / "m.safetensors"))
    for m in (model, back):
        conv = next(p for p in m.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 40, 24) * 255
    with torch.no_grad():
        args = (x, 3) if model.config.is_teacher else (x,)
        torch.testing.assert_close(back.eval()(*args), model.eval()(*args))


def test_load_parts_reads_every_network_of_a_file_once():
    from atbsn.checkpoint import load_parts

    parts = load_parts(shared_path("fixtures", "official", "atbsn_d_official_format.pth"))
    assert parts["student"].config.arch == "C" and parts["teacher"].config.arch == "atbsn"
    assert set(load_parts(shared_path("fixtures", "official", "student_a_official_format.pth"))) == {"student"}
