"""Tests of the Python bindings. Needs CIFAR_LIBRARY (libcifar.so), CIFAR_FIXTURES (the
fixtures directory) and CIFAR_RUST_LOGITS (the dump_logits output); scripts/test-bindings.sh
sets them."""

import array
import os
import struct
import threading
from pathlib import Path

import pytest

import cifar

FIXTURES = Path(os.environ.get("CIFAR_FIXTURES", Path(__file__).resolve().parents[3] / "fixtures"))
INT8 = FIXTURES / "models" / "tiny-int8.cifar"
F32 = FIXTURES / "models" / "tiny-f32.cifar"


def pixels(n, seed=1):
    return bytes((i * 31 + seed * 17) % 251 for i in range(n * 32 * 32 * 3))


def test_versions():
    assert cifar.abi_version() == cifar.ABI_VERSION
    assert cifar.version().count(".") == 2


def test_model_info():
    m = cifar.Model(INT8)
    assert m.num_classes == 10 and m.labels[3] == "cat"
    assert m.input_shape == (3, 32, 32)
    assert m.precision == "int8" and m.device == "cpu"
    assert "fell back to the CPU" in m.device_reason
    assert cifar.Model(data=F32.read_bytes()).precision == "f32"


def test_errors_carry_status_and_message():
    with pytest.raises(cifar.CifarError) as e:
        cifar.Model(FIXTURES / "missing.cifar")
    assert e.value.name == "IO" and "missing.cifar" in str(e.value)
    with pytest.raises(cifar.CifarError) as e:
        cifar.Model(FIXTURES / "malformed" / "a-flipped-weight-byte.cifar")
    assert e.value.name == "CHECKSUM"
    with pytest.raises(cifar.CifarError) as e:
        cifar.Model(INT8, options=cifar.Options(device="gpu"))
    assert e.value.name == "DEVICE"
    with pytest.raises(cifar.CifarError) as e:
        cifar.Options(device="tpu")
    assert e.value.name == "INVALID_ARGUMENT"
    with pytest.raises(cifar.CifarError) as e:
        cifar.Model(data=b"")
    assert e.value.name == "INVALID_ARGUMENT"
    s = cifar.Model(INT8).session()
    with pytest.raises(cifar.CifarError) as e:
        s.logits_rgb8(pixels(1)[:-1], 1)
    assert e.value.name == "BUFFER_SIZE"
    with pytest.raises(cifar.CifarError) as e:
        s.classify_encoded(b"definitely not a png", 3)
    assert e.value.name == "IMAGE"
    with pytest.raises(cifar.CifarError):
        s.logits_rgb8(pixels(1), 0)


def test_inference_paths_agree():
    # int8 accumulates exactly, so batching cannot change a single bit.
    m = cifar.Model(INT8, options=cifar.Options(device="cpu", threads=1, max_batch=2))
    s = m.session()
    px = pixels(3)
    batch = s.logits_rgb8(px, 3)
    assert len(batch) == 30
    ones = [v for b in range(3) for v in s.logits_rgb8(px[b * 3072:(b + 1) * 3072], 1)]
    assert ones == batch
    top = s.classify_rgb8(bytearray(px), 3, k=3)
    assert [t[0].logit for t in top] == [max(batch[b * 10:(b + 1) * 10]) for b in range(3)]
    nchw = array.array("f", [0.25] * (3 * 32 * 32))
    assert len(s.logits_nchw(nchw, 1)) == 10
    del m  # the session keeps the model alive
    assert s.logits_rgb8(px, 3) == batch


def test_threads_share_a_model():
    m = cifar.Model(INT8)
    px = pixels(4, seed=5)
    want = m.session().logits_rgb8(px, 4)
    results = []

    def work():
        results.append(m.session().logits_rgb8(px, 4))

    ts = [threading.Thread(target=work) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(results) == 8 and all(r == want for r in results)


def test_numpy_is_optional_but_works():
    np = pytest.importorskip("numpy")
    s = cifar.Model(INT8).session()
    img = np.frombuffer(pixels(2), dtype=np.uint8).reshape(2, 32, 32, 3)
    out = s.logits_rgb8(img, 2, numpy=True)
    assert out.shape == (20,) and out.dtype == np.float32
    assert list(out) == s.logits_rgb8(pixels(2), 2)


def test_logits_equal_the_rust_sdk_bit_for_bit():
    path = os.environ.get("CIFAR_RUST_LOGITS")
    if not path:
        pytest.skip("CIFAR_RUST_LOGITS not set (scripts/test-bindings.sh sets it)")
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 20
    for line in lines:
        model, image, *bits = line.split()
        s = cifar.Model(FIXTURES / "models" / model).session()
        preds = s.classify_encoded((FIXTURES / "images" / image).read_bytes(), 10)
        for p in preds:
            got = struct.unpack("<I", struct.pack("<f", p.logit))[0]
            assert got == int(bits[p.class_index], 16), (model, image, p)



# scripts/imported-models.sh's folder: the fixture MobileNetV2 imported by the trainer.
IMPORTED = os.environ.get("CIFAR_IMPORTED")


@pytest.mark.skipif(not IMPORTED, reason="CIFAR_IMPORTED (scripts/imported-models.sh) is not set")
def test_an_imported_onnx_model_gives_onnx_runtime_logits():
    """MobileNetV2 imported from PyTorch's ONNX export (depthwise convolutions, ReLU6,
    residual adds), through the C ABI: f32 within 1e-4 of ONNX Runtime's logits on the
    first 1,000 validation images, int8 with the same top-1 on at least 99% of them
    (the bound of the trainer's own test of the same files)."""
    import numpy as np

    imported = Path(IMPORTED)
    want = np.fromfile(FIXTURES / "onnx" / "mobilenetv2.ort-logits.f32", dtype="<f4").reshape(-1, 10)
    n = len(want)
    px = (imported / "validation-1000.rgb8").read_bytes()
    assert len(px) == n * 3072
    chunk = 250
    logits = {}
    for precision in ("f32", "int8"):
        model = cifar.Model(imported / f"mobilenetv2-{precision}.cifar", options=cifar.Options(max_batch=chunk))
        assert model.precision == precision
        s = model.session()
        logits[precision] = np.concatenate(
            [
                s.logits_rgb8(px[i * 3072 : (i + chunk) * 3072], chunk, numpy=True).reshape(-1, 10)
                for i in range(0, n, chunk)
            ]
        )
    scale = np.abs(want).max(axis=1)
    err = (np.abs(logits["f32"] - want).max(axis=1) / scale).max()
    assert err < 1e-4, f"f32: max relative error {err:.2e} against ONNX Runtime"
    same = int((logits["int8"].argmax(axis=1) == want.argmax(axis=1)).sum())
    assert same >= 0.99 * n, f"int8: top-1 as ONNX Runtime f32 on {same} of {n} images"
