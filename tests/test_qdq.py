"""The int8 QDQ graph run in PyTorch computes what the int8 file computes, writes back exactly what it holds, and
fine-tuning it against the fp32 network lowers the error ONNX Runtime measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED

from atbsn import Student
from atbsn.deploy import engines
from atbsn.deploy.export import export_onnx
from atbsn.deploy.quantize import _rms, calibration_crops, equalize, finetune, quantize, split_concat_convs

pytestmark = pytest.mark.skipif(not engines.installed("onnxruntime"), reason="needs onnxruntime (atbsn[cpu])")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small student C, its fp32 graph as quantize splits it, its all-int8 file and noisy crops."""
    import onnx

    from atbsn.images import write_image

    tmp = tmp_path_factory.mktemp("qdq")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    clean = np.stack([120 + 60 * np.sin(xx / 6 + c) * np.cos(yy / 9) for c in range(3)], -1)
    write_image(tmp / "p.png", np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8))
    torch.manual_seed(0)
    student = Student("C", width=8).eval()
    quantize(student, [tmp / "p.png"], tmp / "int8.onnx", max_error=1e6, crop=64, crops=4, progress=False)
    export_onnx(student, tmp / "fp32.onnx")
    fp32 = onnx.load(str(tmp / "fp32.onnx"))
    del fp32.graph.value_info[:]
    crops = calibration_crops([tmp / "p.png"], 4, 64)  # what quantize calibrated on
    fp32 = equalize(split_concat_convs(fp32, 3), crops)
    return {"int8": onnx.load(str(tmp / "int8.onnx")), "fp32": fp32, "dir": tmp, "crops": crops}


def _literal(model):
    """ONNX Runtime running the QDQ operators one by one (no fused int8 kernels)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda x: s.run(None, {"image": x})[0]


def test_the_graph_in_pytorch_is_the_int8_file_at_odd_sizes(files):
    from atbsn.deploy.qdq import QDQGraph

    net, run = QDQGraph(files["int8"], files["fp32"]), _literal(files["int8"])
    x = files["crops"][0]
    for h, w in ((64, 64), (45, 61), (33, 70)):
        xi = np.ascontiguousarray(x[:, :, :h, :w])
        with torch.no_grad():
            ours = net(torch.from_numpy(xi)).numpy()
        theirs = run(xi)
        assert ours.shape == theirs.shape == xi.shape
        # the same rounding: equal but where float round-off lands an activation on the other side of a half step
        # (one such flip deep in the network moves a 6x6 block of the output: 32 pixels of 45x61 seen)
        assert np.mean(np.abs(ours - theirs) < 1e-3) > 0.98 and np.abs(ours - theirs).max() < 8


def test_a_graph_it_cannot_run_is_refused_by_name(files):
    """An operator it does not implement, or a quantized constant other than a conv's weight and bias, is refused
    when the graph is read (fine-tuning is then skipped), never run wrongly."""
    import onnx
    from onnx import numpy_helper

    from atbsn.deploy.qdq import QDQGraph, UnsupportedError

    odd_op = onnx.ModelProto()
    odd_op.CopyFrom(files["int8"])
    next(n for n in odd_op.graph.node if n.op_type == "LeakyRelu").op_type = "Softmax"
    with pytest.raises(UnsupportedError, match="operator Softmax"):
        QDQGraph(odd_op, files["fp32"])
    odd_const = onnx.ModelProto()
    odd_const.CopyFrom(files["int8"])
    dq = next(n for n in odd_const.graph.node
              if n.op_type == "DequantizeLinear" and not n.input[0].endswith("_quantized"))
    odd_const.graph.initializer.append(numpy_helper.from_array(np.zeros((1,), np.uint8), "a_constant"))
    dq.input[0] = "a_constant"
    with pytest.raises(UnsupportedError, match="a_constant: a quantized constant"):
        QDQGraph(odd_const, files["fp32"])


def test_writing_back_untrained_weights_changes_nothing(files):
    from onnx import numpy_helper

    from atbsn.deploy.qdq import QDQGraph

    written = QDQGraph(files["int8"], files["fp32"]).write()
    before = {t.name: numpy_helper.to_array(t) for t in files["int8"].graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    assert before.keys() == after.keys()
    for name, a in before.items():
        assert a.dtype == after[name].dtype and np.array_equal(a, after[name]), name


def test_an_int8_file_with_full_range_weights_is_flagged_when_loaded(files, caplog):
    """Files from before 7-bit weights saturate on CPUs without VNNI: loading one says so; today's files load
    silently."""
    import onnx
    from onnx import TensorProto, numpy_helper

    from atbsn import load
    from atbsn.deploy.qdq import WEIGHT_QMAX

    weights = [t for t in files["int8"].graph.initializer if t.data_type == TensorProto.INT8]
    assert weights and all(np.abs(numpy_helper.to_array(t).astype(int)).max() <= WEIGHT_QMAX for t in weights)
    with caplog.at_level("WARNING"):
        load(files["dir"] / "int8.onnx")
    assert "int8 weights beyond" not in caplog.text
    old = onnx.ModelProto()
    old.CopyFrom(files["int8"])
    w = next(t for t in old.graph.initializer if t.data_type == TensorProto.INT8)
    a = numpy_helper.to_array(w).copy()
    a.flat[0] = 127
    w.CopyFrom(numpy_helper.from_array(a, w.name))
    onnx.save(old, str(files["dir"] / "old-int8.onnx"))
    with caplog.at_level("WARNING"):
        load(files["dir"] / "old-int8.onnx")
    assert "old-int8.onnx: int8 weights beyond -64..64" in caplog.text and "atbsn quantize again" in caplog.text


def test_the_gradient_reaches_every_weight_and_scale(files):
    from atbsn.deploy.qdq import QDQGraph

    net = QDQGraph(files["int8"], files["fp32"])
    net(torch.from_numpy(files["crops"][0])).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.weight_params())
    assert sum(int(p.grad is not None and p.grad != 0) for p in net.log_scales.values()) >= len(net.log_scales) // 2


def test_no_convolution_output_is_rounded(files):
    """Only a convolution's input is rounded (once per activation): its output, the image last, stays float."""
    rounded = {n.input[0] for n in files["int8"].graph.node if n.op_type == "QuantizeLinear"}
    assert not rounded & {n.output[0] for n in files["int8"].graph.node if n.op_type == "Conv"}


def test_the_last_convolutions_output_stays_float(files):
    ops = [n for n in files["int8"].graph.node if n.op_type == "QuantizeLinear"]
    producer = {o: n for n in files["int8"].graph.node for o in n.output}
    last = producer[files["int8"].graph.output[0].name]
    seen, stack = set(), [last]
    while stack:  # walk back from the output to the last convolution: no rounding on the way
        n = stack.pop()
        assert n.op_type != "QuantizeLinear"
        if n.op_type != "Conv":
            stack += [producer[i] for i in n.input if i in producer and i not in seen]
            seen.update(n.input)
    assert ops  # the inputs are rounded


@pytest.mark.slow
def test_finetuning_lowers_the_error_onnx_runtime_measures(tmp_path):
    """On a trained student (the released C): 20 steps of fine-tuning bring the all-int8 file's error against
    fp32, as ONNX Runtime runs it on the calibration crops, down."""
    import onnx

    from atbsn.checkpoint import load
    from atbsn.deploy.engines import ort_runner

    real = SHARED / "fixtures" / "pretrained" / "aprrd_student_c_sidd_medium.pth"
    photos = SHARED / "data" / "real" / "sidd9"
    if not real.exists() or not photos.exists():
        pytest.skip("needs ../shared (the released student C and sidd9)")
    quantize(load(real), [photos], tmp_path / "int8.onnx", all_int8=True, crops=3, crop=64, progress=False)
    crops = calibration_crops([photos], 3, 64)
    export_onnx(load(real), tmp_path / "fp32.onnx")
    fp32 = onnx.load(str(tmp_path / "fp32.onnx"))
    del fp32.graph.value_info[:]
    fp32 = equalize(split_concat_convs(fp32, 3), crops)
    onnx.save(fp32, str(tmp_path / "fp32-split.onnx"))
    ref = ort_runner(tmp_path / "fp32-split.onnx")

    refs = [np.clip(ref(x), 0, 255) for x in crops]

    def rms(model) -> float:  # as quantize measures it
        onnx.save(model, str(tmp_path / "measured.onnx"))
        return _rms(tmp_path / "measured.onnx", crops, refs)

    tuned = finetune(tmp_path / "int8.onnx", fp32, crops, ref, steps=20, crop=64, progress=False)
    assert tuned is not None
    before, after = rms(onnx.load(str(tmp_path / "int8.onnx"))), rms(tuned)
    assert after < 0.9 * before, (before, after)


def test_equalizing_the_channels_keeps_the_function_and_evens_the_ranges(files):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    before = split_concat_convs(onnx.load(str(files["dir"] / "fp32.onnx")), 3)
    after = equalize(before.__deepcopy__(), files["crops"])
    x = np.ascontiguousarray(files["crops"][0][:, :, :45, :61])
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
            for m in (before, after))
    assert np.abs(a - b).max() < 1e-3  # the same function (float round-off)
    changed = [t.name for t, u in zip(before.graph.initializer, after.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))]
    assert changed  # and it did rescale something
