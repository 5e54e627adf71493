"""Python bindings for libcifar (the cifar-edge inference SDK), over ctypes.

    import cifar
    model = cifar.Model("model.cifar")
    session = model.session()
    for p in session.classify_encoded(open("cat.png", "rb").read(), k=3):
        print(p.label, p.probability)

The shared library is found through the CIFAR_LIBRARY environment variable (a path to
libcifar.so), else the system's library search (ctypes.util.find_library). numpy is
optional: any contiguous buffer (bytes, bytearray, memoryview, array.array, numpy
arrays) is accepted as input; results are lists, or numpy arrays when ``numpy=True``.

Thread safety is the C library's: a Model may be shared across threads; use one Session
per thread.
"""

import array
import ctypes
import ctypes.util
import os
from typing import List, NamedTuple, Optional, Sequence

__all__ = ["CifarError", "Model", "Options", "Prediction", "Session", "abi_version", "version"]

STATUS_NAMES = {
    0: "OK", 1: "INVALID_ARGUMENT", 2: "NULL_POINTER", 3: "BUFFER_SIZE", 4: "IO", 5: "INVALID_MODEL",
    6: "UNSUPPORTED_VERSION", 7: "CHECKSUM", 8: "IMAGE", 9: "DEVICE", 10: "PANIC", 11: "INTERNAL",
}
ABI_VERSION = 1


class CifarError(Exception):
    """A failed libcifar call: ``status`` (int), ``name`` and the library's message."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.name = STATUS_NAMES.get(status, "UNKNOWN")
        super().__init__(f"CIFAR_STATUS_{self.name}: {message}")


class Prediction(NamedTuple):
    class_index: int
    probability: float
    logit: float
    label: str


class _CPrediction(ctypes.Structure):
    _fields_ = [("class_index", ctypes.c_uint32), ("probability", ctypes.c_float), ("logit", ctypes.c_float)]


def _load() -> ctypes.CDLL:
    path = os.environ.get("CIFAR_LIBRARY") or ctypes.util.find_library("cifar")
    if not path:
        raise OSError("libcifar not found: set CIFAR_LIBRARY to the path of libcifar.so")
    lib = ctypes.CDLL(path)
    P, S, U8, F32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_float)
    PP = ctypes.POINTER(ctypes.c_void_p)
    CS = ctypes.c_char_p
    sigs = {
        "cifar_version": ([], CS),
        "cifar_abi_version": ([], ctypes.c_uint32),
        "cifar_status_str": ([ctypes.c_int32], CS),
        "cifar_last_error": ([], CS),
        "cifar_options_new": ([PP], ctypes.c_int32),
        "cifar_options_free": ([P], None),
        "cifar_options_set_device": ([P, CS], ctypes.c_int32),
        "cifar_options_set_threads": ([P, ctypes.c_uint32], ctypes.c_int32),
        "cifar_options_set_max_batch": ([P, ctypes.c_uint32], ctypes.c_int32),
        "cifar_model_open": ([CS, P, PP], ctypes.c_int32),
        "cifar_model_open_buffer": ([U8, S, P, PP], ctypes.c_int32),
        "cifar_model_free": ([P], None),
        "cifar_model_num_classes": ([P, ctypes.POINTER(S)], ctypes.c_int32),
        "cifar_model_label": ([P, S, ctypes.POINTER(CS)], ctypes.c_int32),
        "cifar_model_input_shape": ([P, ctypes.POINTER(S)], ctypes.c_int32),
        "cifar_model_precision": ([P, ctypes.POINTER(CS)], ctypes.c_int32),
        "cifar_model_device": ([P, ctypes.POINTER(CS), ctypes.POINTER(CS)], ctypes.c_int32),
        "cifar_session_new": ([P, PP], ctypes.c_int32),
        "cifar_session_free": ([P], None),
        "cifar_logits_rgb8": ([P, U8, S, S, F32, S], ctypes.c_int32),
        "cifar_logits_nchw": ([P, F32, S, S, F32, S], ctypes.c_int32),
        "cifar_classify_rgb8": ([P, U8, S, S, S, ctypes.POINTER(_CPrediction), S], ctypes.c_int32),
        "cifar_classify_encoded": ([P, U8, S, S, ctypes.POINTER(_CPrediction), S], ctypes.c_int32),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res
    if lib.cifar_abi_version() != ABI_VERSION:
        raise OSError(f"{path}: ABI version {lib.cifar_abi_version()}, these bindings need {ABI_VERSION}")
    return lib


_lib = _load()


def _check(status: int) -> None:
    if status != 0:
        raise CifarError(status, _lib.cifar_last_error().decode("utf-8", "replace"))


def version() -> str:
    return _lib.cifar_version().decode()


def abi_version() -> int:
    return _lib.cifar_abi_version()


def _u8(data):
    """A (pointer, length) view of a contiguous byte buffer; keeps it alive via the return."""
    view = memoryview(data).cast("B")
    if view.nbytes == 0:
        # A valid pointer with length 0: the library reports the empty input itself.
        dummy = (ctypes.c_uint8 * 1)()
        return ctypes.cast(dummy, ctypes.POINTER(ctypes.c_uint8)), 0, dummy
    buf = (ctypes.c_uint8 * view.nbytes).from_buffer_copy(view) if view.readonly else \
        (ctypes.c_uint8 * view.nbytes).from_buffer(view)
    return ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint8)), view.nbytes, buf


class Options:
    """Model options: device policy ("auto", "cpu", "gpu", "gpu-or-cpu"), threads, max_batch."""

    def __init__(self, device: Optional[str] = None, threads: Optional[int] = None, max_batch: Optional[int] = None):
        handle = ctypes.c_void_p()
        _check(_lib.cifar_options_new(ctypes.byref(handle)))
        self._handle = handle
        if device is not None:
            _check(_lib.cifar_options_set_device(self._handle, device.encode()))
        if threads is not None:
            _check(_lib.cifar_options_set_threads(self._handle, threads))
        if max_batch is not None:
            _check(_lib.cifar_options_set_max_batch(self._handle, max_batch))

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.cifar_options_free(self._handle)
            self._handle = None


class Model:
    """A compiled model, opened from a path (memory-mapped) or from bytes."""

    def __init__(self, path=None, *, data=None, options: Optional[Options] = None):
        handle = ctypes.c_void_p()
        opts = options._handle if options is not None else None
        if data is not None:
            ptr, n, keep = _u8(data)
            _check(_lib.cifar_model_open_buffer(ptr, n, opts, ctypes.byref(handle)))
            del keep
        else:
            _check(_lib.cifar_model_open(os.fsencode(path), opts, ctypes.byref(handle)))
        self._handle = handle
        n = ctypes.c_size_t()
        _check(_lib.cifar_model_num_classes(self._handle, ctypes.byref(n)))
        self.labels: List[str] = []
        for i in range(n.value):
            s = ctypes.c_char_p()
            _check(_lib.cifar_model_label(self._handle, i, ctypes.byref(s)))
            self.labels.append(s.value.decode())
        shape = (ctypes.c_size_t * 3)()
        _check(_lib.cifar_model_input_shape(self._handle, shape))
        self.input_shape = tuple(shape)
        p, d, r = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_char_p()
        _check(_lib.cifar_model_precision(self._handle, ctypes.byref(p)))
        _check(_lib.cifar_model_device(self._handle, ctypes.byref(d), ctypes.byref(r)))
        self.precision, self.device, self.device_reason = p.value.decode(), d.value.decode(), r.value.decode()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def session(self) -> "Session":
        return Session(self)

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.cifar_model_free(self._handle)
            self._handle = None


class Session:
    """Inference state for one thread; keeps its model alive."""

    def __init__(self, model: Model):
        handle = ctypes.c_void_p()
        _check(_lib.cifar_session_new(model._handle, ctypes.byref(handle)))
        self._handle = handle
        self.labels = list(model.labels)
        self.input_shape = model.input_shape

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.cifar_session_free(self._handle)
            self._handle = None

    def _out(self, n: int, numpy: bool, buf):
        if numpy:
            import numpy as np
            return np.frombuffer(buf, dtype=np.float32, count=n).copy()
        return list(buf)

    def logits_rgb8(self, pixels, batch: int = 1, numpy: bool = False):
        """Raw logits of `batch` 32x32 RGB8 images (HWC bytes): batch * classes floats."""
        ptr, n, keep = _u8(pixels)
        out = (ctypes.c_float * (max(batch, 0) * len(self.labels) or 1))()
        _check(_lib.cifar_logits_rgb8(self._handle, ptr, n, batch, out, max(batch, 0) * len(self.labels)))
        del keep
        return self._out(batch * len(self.labels), numpy, out)

    def logits_nchw(self, values: Sequence[float], batch: int = 1, numpy: bool = False):
        """Raw logits of `batch` normalized NCHW float32 images."""
        arr = array.array("f", values) if not hasattr(values, "__array_interface__") else memoryview(values).cast("B").cast("f")
        n = len(arr)
        inp = (ctypes.c_float * max(n, 1)).from_buffer_copy(memoryview(arr).cast("B")) if n else None
        out = (ctypes.c_float * (max(batch, 0) * len(self.labels) or 1))()
        _check(_lib.cifar_logits_nchw(self._handle, inp, n, batch, out, max(batch, 0) * len(self.labels)))
        return self._out(batch * len(self.labels), numpy, out)

    def _wrap(self, raw) -> Prediction:
        return Prediction(raw.class_index, raw.probability, raw.logit, self.labels[raw.class_index])

    def classify_rgb8(self, pixels, batch: int = 1, k: int = 3) -> List[List[Prediction]]:
        """Top-k classes of each of `batch` RGB8 images."""
        ptr, n, keep = _u8(pixels)
        out = (_CPrediction * (max(batch * k, 1)))()
        _check(_lib.cifar_classify_rgb8(self._handle, ptr, n, batch, k, out, batch * k))
        del keep
        return [[self._wrap(out[b * k + i]) for i in range(k)] for b in range(batch)]

    def classify_encoded(self, data, k: int = 3) -> List[Prediction]:
        """Top-k classes of an encoded image (PNG, JPEG, PPM; any size)."""
        ptr, n, keep = _u8(data)
        out = (_CPrediction * max(k, 1))()
        _check(_lib.cifar_classify_encoded(self._handle, ptr, n, k, out, k))
        del keep
        return [self._wrap(out[i]) for i in range(k)]
