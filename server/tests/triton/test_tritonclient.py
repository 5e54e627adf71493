"""cifar-serve driven by the real Triton client (tritonclient from PyPI), over HTTP and
gRPC, as a Triton or KServe user would drive it. Run by scripts/test-triton.sh, which
makes the virtual environment and passes:

  CIFAR_SERVE        the cifar-serve binary
  CIFAR_FIXTURES     the repository's fixtures/ directory
  CIFAR_RUST_LOGITS  the Rust SDK's logits of every fixture image, as exact bit patterns
                     (ffi/examples/dump_logits.rs): the server must answer them bit for bit
  CIFAR_IMPORTED     scripts/imported-models.sh's folder (an ONNX model imported by the
                     trainer), or empty: that test is skipped
"""
import os
import pathlib
import subprocess
import tempfile
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

FIXTURES = pathlib.Path(os.environ["CIFAR_FIXTURES"])
MODEL = "tiny-int8"
API_KEY = "api-key-for-tests-0123"
ADMIN_KEY = "admin-key-for-tests-4567"


def auth():
    # A fresh dict each call: tritonclient.http adds Inference-Header-Content-Length to
    # the headers dict it is given.
    return {"authorization": f"Bearer {API_KEY}"}


def admin():
    return {"authorization": f"Bearer {ADMIN_KEY}"}


def images():
    paths = sorted(p for p in (FIXTURES / "images").iterdir() if p.suffix == ".png")
    return [p.name for p in paths], np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def rust_logits():
    """{image name: float32 logits} of tiny-int8 from the Rust SDK."""
    out = {}
    for line in open(os.environ["CIFAR_RUST_LOGITS"]):
        model, image, *bits = line.split()
        if model == f"{MODEL}.cifar":
            out[image] = np.array([int(b, 16) for b in bits], dtype=np.uint32).view(np.float32)
    return out


class Server:
    """A cifar-serve process on free loopback ports (HTTP and gRPC)."""

    def __init__(self, tmp, extra=(), model=FIXTURES / "models" / f"{MODEL}.cifar"):
        self.dir = pathlib.Path(tmp)
        (self.dir / "api.key").write_text(API_KEY + "\n")
        (self.dir / "admin.key").write_text(ADMIN_KEY + "\n")
        ready = self.dir / "ready"
        self.log = open(self.dir / "server.log", "w")
        self.proc = subprocess.Popen(
            [
                os.environ["CIFAR_SERVE"],
                "--model", str(model),
                "--addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--ready-file", str(ready),
                "--api-key-file", str(self.dir / "api.key"), "--admin-key-file", str(self.dir / "admin.key"),
                "--drift-min-images", "10", *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.time() + 60
        while not ready.exists():
            assert self.proc.poll() is None, (self.dir / "server.log").read_text()
            assert time.time() < deadline, "cifar-serve did not start"
            time.sleep(0.02)
        self.http, self.grpc = ready.read_text().split()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def server():
    with tempfile.TemporaryDirectory() as tmp:
        s = Server(tmp)
        yield s
        assert s.proc.poll() is None, "the server died during the tests"
        s.stop()


@pytest.fixture(scope="module")
def clients(server):
    return httpclient.InferenceServerClient(server.http), grpcclient.InferenceServerClient(server.grpc)


def test_health_and_metadata(clients):
    for c in clients:
        assert c.is_server_live()
        assert c.is_server_ready()
        assert c.is_model_ready(MODEL)
        assert not c.is_model_ready("no-such-model")
    meta = clients[0].get_server_metadata()
    assert meta["name"] == "cifar-serve" and "classification" in meta["extensions"]
    gmeta = clients[1].get_server_metadata(as_json=True)
    assert gmeta["name"] == "cifar-serve" and "statistics" in gmeta["extensions"]

    m = clients[0].get_model_metadata(MODEL, headers=auth())
    g = clients[1].get_model_metadata(MODEL, headers=auth(), as_json=True)
    assert m["name"] == g["name"] == MODEL
    assert [i["name"] for i in m["inputs"]] == [i["name"] for i in g["inputs"]] == ["images", "input"]
    assert [int(d) for d in g["inputs"][0]["shape"]] == m["inputs"][0]["shape"] == [-1, 32, 32, 3]
    assert [o["name"] for o in g["outputs"]] == ["logits", "probabilities"]


def test_config_and_statistics(clients):
    http, grpc_ = clients
    cfg = http.get_model_config(MODEL, headers=auth())
    gcfg = grpc_.get_model_config(MODEL, headers=auth()).config
    assert cfg["max_batch_size"] == gcfg.max_batch_size == 64
    assert cfg["input"][0]["data_type"] == "TYPE_UINT8"
    assert gcfg.input[0].data_type == 2  # TYPE_UINT8
    assert list(gcfg.input[0].dims) == cfg["input"][0]["dims"] == [32, 32, 3]
    assert gcfg.output[0].name == "logits" and list(gcfg.output[0].dims) == [10]
    assert gcfg.instance_group[0].kind == 2  # KIND_CPU

    names, batch = images()
    before = grpc_.get_inference_statistics(MODEL, headers=auth()).model_stats[0].inference_count
    inp = grpcclient.InferInput("images", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    grpc_.infer(MODEL, [inp], headers=auth())
    stats = grpc_.get_inference_statistics(MODEL, headers=auth()).model_stats[0]
    assert stats.name == MODEL and stats.version == "1"
    assert stats.inference_count == before + len(names)
    assert stats.inference_stats.success.count >= 1 and stats.inference_stats.compute_infer.ns > 0
    h = http.get_inference_statistics(MODEL, headers=auth())["model_stats"][0]
    assert h["inference_count"] == stats.inference_count
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in h["batch_stats"]) == h["inference_count"]


@pytest.mark.parametrize("binary", [True, False])
def test_http_inference_equals_the_sdk_bit_for_bit(clients, binary):
    names, batch = images()
    expect = rust_logits()
    inp = httpclient.InferInput("images", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch, binary_data=binary)
    out = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
    r = clients[0].infer(MODEL, [inp], outputs=out, headers=auth(), request_id="req-7")
    logits = r.as_numpy("logits")
    assert logits.shape == (len(names), 10)
    for name, row in zip(names, logits):
        assert row.astype(np.float32).view(np.uint32).tolist() == expect[name].view(np.uint32).tolist(), name
    assert r.get_response()["id"] == "req-7"


def test_grpc_inference_equals_the_sdk_bit_for_bit(clients):
    names, batch = images()
    expect = rust_logits()
    inp = grpcclient.InferInput("images", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    r = clients[1].infer(MODEL, [inp], headers=auth(), request_id="g-1")
    logits = r.as_numpy("logits")
    probs = r.as_numpy("probabilities")
    assert logits.shape == probs.shape == (len(names), 10)
    for name, row in zip(names, logits):
        assert row.view(np.uint32).tolist() == expect[name].view(np.uint32).tolist(), name
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert r.get_response().id == "g-1" and r.get_response().model_version == "1"
    # FP32 input (normalized NCHW) over gRPC gives the same classes.
    mean = np.array([0.4914, 0.4822, 0.4465], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.2470, 0.2435, 0.2616], np.float32).reshape(1, 3, 1, 1)
    x = ((batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - mean) / std
    f = grpcclient.InferInput("input", list(x.shape), "FP32")
    f.set_data_from_numpy(x.astype(np.float32))
    r2 = clients[1].infer(MODEL, [f], headers=auth())
    assert (r2.as_numpy("logits").argmax(1) == logits.argmax(1)).all()


def test_classification_over_both(clients):
    names, batch = images()
    expect = rust_logits()
    for client, mod in ((clients[0], httpclient), (clients[1], grpcclient)):
        inp = mod.InferInput("images", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        out = [mod.InferRequestedOutput("logits", class_count=3)]
        top = client.infer(MODEL, [inp], outputs=out, headers=auth()).as_numpy("logits")
        assert top.shape == (len(names), 3)
        for name, row in zip(names, top):
            score, index, label = row[0].decode().split(":")
            assert int(index) == int(np.argmax(expect[name])) and label, (name, row)


def test_keys_are_required(server, clients):
    http, grpc_ = clients
    names, batch = images()
    inp = httpclient.InferInput("images", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    for headers in (None, {"authorization": "Bearer wrong"}):
        with pytest.raises(InferenceServerException) as e:
            http.infer(MODEL, [inp], headers=headers)
        assert e.value.status() == "401", e.value
    ginp = grpcclient.InferInput("images", list(batch.shape), "UINT8")
    ginp.set_data_from_numpy(batch)
    with pytest.raises(InferenceServerException) as e:
        grpc_.infer(MODEL, [ginp])
    assert e.value.status() == "StatusCode.UNAUTHENTICATED", e.value
    # Repository calls need the admin key; the API key does not suffice.
    with pytest.raises(InferenceServerException) as e:
        http.load_model(MODEL, headers=auth())
    assert e.value.status() == "401"
    with pytest.raises(InferenceServerException) as e:
        grpc_.load_model(MODEL, headers=auth())
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as e:
        grpc_.get_model_repository_index()
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    grpc_.load_model(MODEL, headers=admin())
    http.load_model(MODEL, headers=admin())
    index = grpc_.get_model_repository_index(headers=admin(), as_json=True)
    assert index["models"][0]["name"] == MODEL and index["models"][0]["version"] == "3"
    # Health stays open; the keys appear in no log line.
    assert http.is_server_ready() and grpc_.is_server_live()
    log = (server.dir / "server.log").read_text()
    assert API_KEY not in log and ADMIN_KEY not in log


def test_malformed_grpc_messages_get_status_codes_and_the_server_stays_up(server, clients):
    channel = grpc.insecure_channel(server.grpc)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    meta = list(auth().items())
    # Not protobuf at all: what gRPC's status table prescribes for an unparseable request.
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x0a\xff\xff\xff\xff\x0f", metadata=meta, timeout=10)
    assert e.value.code() == grpc.StatusCode.INTERNAL, e.value
    # Well-formed messages with the wrong content.
    from tritonclient.grpc import service_pb2

    def infer(**kw):
        req = service_pb2.ModelInferRequest(model_name=MODEL, **kw)
        return raw(req.SerializeToString(), metadata=meta, timeout=10)

    tensor = service_pb2.ModelInferRequest.InferInputTensor
    cases = [
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "exactly one input"),
        ({"inputs": [tensor(name="images", datatype="UINT8", shape=[1, 32, 32, 3])],
          "raw_input_contents": [b"\x00" * 100]}, grpc.StatusCode.INVALID_ARGUMENT, "3072 expected"),
        ({"inputs": [tensor(name="images", datatype="INT64", shape=[1, 32, 32, 3])]},
         grpc.StatusCode.INVALID_ARGUMENT, "not supported"),
        ({"inputs": [tensor(name="images", datatype="UINT8", shape=[1, 32, 32, 3])]},
         grpc.StatusCode.INVALID_ARGUMENT, "has no data"),
        ({"model_version": "9", "inputs": [tensor(name="images", datatype="UINT8", shape=[1, 32, 32, 3])]},
         grpc.StatusCode.NOT_FOUND, "no version"),
    ]
    for kw, code, text in cases:
        with pytest.raises(grpc.RpcError) as e:
            infer(**kw)
        assert e.value.code() == code and text in e.value.details(), (kw.keys(), e.value)
    with pytest.raises(grpc.RpcError) as e:
        raw(service_pb2.ModelInferRequest(model_name="nope").SerializeToString(), metadata=meta, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # Larger than --max-body-bytes (32 MiB by default): refused before it is decoded.
    # tonic answers OUT_OF_RANGE here (gRPC's table says RESOURCE_EXHAUSTED; see grpc.rs).
    big = service_pb2.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\x00" * (33 << 20)])
    with pytest.raises(grpc.RpcError) as e:
        raw(big.SerializeToString(), metadata=meta, timeout=30)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE and "too large" in e.value.details(), e.value
    assert clients[1].is_server_live() and clients[0].is_server_ready()


def test_tls_refuses_plain_text_and_serves_tls_clients():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        s = Server(tmp, ["--tls-cert", str(cert), "--tls-key", str(key)])
        try:
            names, batch = images()
            # Plain-text clients get nowhere.
            with pytest.raises(Exception):
                httpclient.InferenceServerClient(s.http, connection_timeout=5, network_timeout=5).is_server_live()
            with pytest.raises(InferenceServerException):
                grpcclient.InferenceServerClient(s.grpc).is_server_live(client_timeout=5)
            # TLS clients that trust the certificate work, over both protocols.
            import gevent.ssl

            https = httpclient.InferenceServerClient(
                s.http, ssl=True,
                ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=str(cert)),
            )
            assert https.is_server_live()
            inp = httpclient.InferInput("images", list(batch.shape), "UINT8")
            inp.set_data_from_numpy(batch)
            h = https.infer(MODEL, [inp], headers=auth()).as_numpy("logits")
            port = s.grpc.rsplit(":", 1)[1]
            gtls = grpcclient.InferenceServerClient(f"localhost:{port}", ssl=True, root_certificates=str(cert))
            assert gtls.is_server_live()
            ginp = grpcclient.InferInput("images", list(batch.shape), "UINT8")
            ginp.set_data_from_numpy(batch)
            g = gtls.infer(MODEL, [ginp], headers=auth()).as_numpy("logits")
            assert h.view(np.uint32).tolist() == g.view(np.uint32).tolist()
        finally:
            s.stop()


@pytest.mark.skipif(not os.environ.get("CIFAR_IMPORTED"), reason="CIFAR_IMPORTED is not set")
def test_an_imported_onnx_model_serves_onnx_runtime_logits():
    """The fixture MobileNetV2, imported from PyTorch's ONNX export by the trainer (f32),
    served: its logits over HTTP and gRPC within 1e-4 of ONNX Runtime's on 64 validation
    images."""
    imported = pathlib.Path(os.environ["CIFAR_IMPORTED"])
    n = 64
    want = np.fromfile(FIXTURES / "onnx" / "mobilenetv2.ort-logits.f32", dtype="<f4").reshape(-1, 10)[:n]
    batch = np.frombuffer((imported / "validation-1000.rgb8").read_bytes(), dtype=np.uint8)[: n * 3072]
    batch = batch.reshape(n, 32, 32, 3)
    with tempfile.TemporaryDirectory() as tmp:
        s = Server(tmp, model=imported / "mobilenetv2-f32.cifar")
        try:
            name = "mobilenetv2-f32"
            http, grpc_client = httpclient.InferenceServerClient(s.http), grpcclient.InferenceServerClient(s.grpc)
            inp = httpclient.InferInput("images", list(batch.shape), "UINT8")
            inp.set_data_from_numpy(batch, binary_data=True)
            out = [httpclient.InferRequestedOutput("logits", binary_data=True)]
            by_http = http.infer(name, [inp], outputs=out, headers=auth()).as_numpy("logits")
            ginp = grpcclient.InferInput("images", list(batch.shape), "UINT8")
            ginp.set_data_from_numpy(batch)
            by_grpc = grpc_client.infer(
                name, [ginp], outputs=[grpcclient.InferRequestedOutput("logits")], headers=auth()
            ).as_numpy("logits")
            for got in (by_http, by_grpc):
                err = (np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)).max()
                assert err < 1e-4, f"max relative error {err:.2e} against ONNX Runtime"
        finally:
            s.stop()
