"""The comparison side of bench_serving.py: the same SavedModel behind KServe's own Python
model server (``kserve.ModelServer``) through a minimal ``kserve.Model``.

Runs in ``.venv-kserve`` (the kserve SDK pins cloudevents<2, which our environment cannot
take); TensorFlow comes from the main environment through a .pth file the benchmark writes.
Usage: _kserve_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import base64
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import kserve  # noqa: E402
import tensorflow as tf  # noqa: E402


class FashionMnist(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.serve = None
        self.load()

    def load(self) -> bool:
        self.serve = tf.saved_model.load(self.path).signatures["serving_default"]
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        images = [base64.b64decode(i["image_bytes"]["b64"]) for i in payload["instances"]]
        probabilities = self.serve(image_bytes=tf.constant(images))["probabilities"].numpy()
        return {"predictions": probabilities.tolist()}


if __name__ == "__main__":
    model_dir, port = sys.argv[1], int(sys.argv[2])
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1,
                       enable_latency_logging=False).start([FashionMnist("fashion-mnist", model_dir)])
