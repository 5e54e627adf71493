"""The kind of server cifar-serve replaces: FastAPI + ONNX Runtime, as the seed project
served its model, with the two endpoints `cifar-load` drives, so both servers get the
same requests:

- `POST /v1/classify`: one image file as the body (or multipart), decoded with Pillow,
  resized to 32x32, normalized, answered with the top-5 classes as JSON;
- `POST /v2/models/{name}/infer`: the Open Inference Protocol's binary tensor data
  (`Inference-Header-Content-Length`, one UINT8 [N,32,32,3] input) with the
  classification extension on the output, answered in binary as Triton does.

Configured by the environment (benches/serve/compare.sh sets it):
  MODEL_ONNX    the exported model (`trainer export-onnx`)
  MODEL_CIFAR   the .cifar it came from (labels and normalization)
  ORT_THREADS   ONNX Runtime intra-op threads per worker (default 1)

    uvicorn fastapi_ort:app --workers 2
"""
import io
import json
import os
import struct
import time

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request, Response
from PIL import Image


def _metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))["__metadata__"]


META = _metadata(os.environ["MODEL_CIFAR"])
LABELS = json.loads(META["labels"])
NORM = json.loads(META["preprocessing"])["normalization"]
MEAN = np.array(NORM["mean"], np.float32).reshape(1, 3, 1, 1)
STD = np.array(NORM["std"], np.float32).reshape(1, 3, 1, 1)

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
options.inter_op_num_threads = 1
SESSION = ort.InferenceSession(os.environ["MODEL_ONNX"], options, providers=["CPUExecutionProvider"])
INPUT = SESSION.get_inputs()[0].name

app = FastAPI()

# This process's request and compute time (GET /metrics): with one worker, the server's
# per-request overhead is their difference. Model time only: normalization and ORT.
TIMES = {"requests": 0, "request_seconds": 0.0, "compute_seconds": 0.0}


@app.middleware("http")
async def timed(request: Request, call_next):
    started = time.perf_counter()
    response = await call_next(request)
    if request.url.path != "/metrics":
        TIMES["requests"] += 1
        TIMES["request_seconds"] += time.perf_counter() - started
    return response


@app.get("/metrics")
async def metrics():
    return Response("".join(f"fastapi_{k} {v}\n" for k, v in TIMES.items()), media_type="text/plain")


def _logits(rgb):
    """rgb: uint8 [N,32,32,3] -> float32 logits [N,classes]."""
    started = time.perf_counter()
    x = (rgb.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - MEAN) / STD
    out = SESSION.run(None, {INPUT: x})[0]
    TIMES["compute_seconds"] += time.perf_counter() - started
    return out


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@app.post("/v1/classify")
async def classify(request: Request):
    body = await request.body()
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        files = [await f.read() for f in form.values() if hasattr(f, "read")]
    else:
        files = [body]
    images = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB").resize((32, 32), Image.BILINEAR)) for f in files])
    probs = _softmax(_logits(images))
    results = []
    for row in probs:
        top = np.argsort(-row)[:5]
        results.append({"top": [{"class": int(i), "label": LABELS[i], "probability": float(row[i])} for i in top]})
    return {"results": results}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    body = await request.body()
    json_len = int(request.headers.get("inference-header-content-length", len(body)))
    header = json.loads(body[:json_len])
    inp = header["inputs"][0]
    n, h, w, c = inp["shape"]
    rgb = np.frombuffer(body[json_len:], np.uint8).reshape(n, h, w, c)
    logits = _logits(rgb)
    outputs, binary = [], b""
    for out in header.get("outputs", [{"name": "logits"}]):
        k = out.get("parameters", {}).get("classification")
        values = logits if out["name"] == "logits" else _softmax(logits)
        if k:
            strings = []
            for row in values:
                for i in np.argsort(-row)[:k]:
                    strings.append(f"{row[i]}:{i}:{LABELS[i]}".encode())
            data = b"".join(struct.pack("<I", len(s)) + s for s in strings)
            outputs.append({"name": out["name"], "datatype": "BYTES", "shape": [n, k], "parameters": {"binary_data_size": len(data)}})
        else:
            data = values.astype(np.float32).tobytes()
            outputs.append({"name": out["name"], "datatype": "FP32", "shape": list(values.shape), "parameters": {"binary_data_size": len(data)}})
        binary += data
    head = json.dumps({"model_name": name, "outputs": outputs}).encode()
    return Response(
        head + binary,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
