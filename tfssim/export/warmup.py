"""TensorFlow Serving's warm-up file (``assets.extra/tf_serving_warmup_requests``), written without its protos.

The records are ``tensorflow.serving.PredictionLog`` messages encoded by hand, so exporting does
not need the optional ``tensorflow-serving-api`` package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def warmup_record(model_name: str, signature: str, inputs: dict[str, np.ndarray] | str,
                  image: np.ndarray | None = None) -> bytes:
    """A serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictRequest``.

    ``inputs`` maps input names to arrays (``warmup_record(name, sig, "image", array)`` is
    short for one input). Encoded by hand from TensorFlow Serving's protos
    (``PredictionLog.predict_log = 6`` > ``PredictLog.request = 1`` > ``PredictRequest``
    {``model_spec = 1`` {``name = 1``, ``signature_name = 3``}, ``inputs = 2``: map entries
    {``key = 1``, ``value = 2``: ``TensorProto``}}) so exporting does not need the optional
    ``tensorflow-serving-api`` package; the result parses with that package's
    ``PredictionLog`` (checked in the tests when it is installed).
    """
    if isinstance(inputs, str):
        inputs = {inputs: image}
    spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    request = _field(1, spec)
    for key in sorted(inputs):
        tensor = tf.make_tensor_proto(np.asarray(inputs[key])).SerializeToString()
        request += _field(2, _field(1, key.encode()) + _field(2, tensor))
    return _field(6, _field(1, request))


def _write_warmup(path: Path, model_name: str, patch_size: int, channels: int, stride: int,
                  side: int | None = None) -> None:
    """One request per signature, on a random image of ``side`` pixels per side (default 1.5 patches)."""
    side = side or patch_size + patch_size // 2
    image = np.random.default_rng(0).integers(0, 256, size=(side, side, channels), dtype=np.uint8)
    floats = image.astype(np.float32) / 255.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(warmup_record(model_name, "serving_default", {"image": image}))
        writer.write(warmup_record(model_name, "serve_float", {"image": floats}))
        writer.write(warmup_record(model_name, "serve_with_stride",
                                   {"image": floats, "stride": np.array(stride, np.int32)}))
