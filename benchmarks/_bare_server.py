"""The HTTP ceiling for bench_serving.py: FastAPI on uvicorn (httptools, uvloop) doing what our
V1 endpoint does before the model (read the body, parse the JSON, decode the base64 image
bytes) and answering a constant prediction. No model, no batching.

    python benchmarks/_bare_server.py PORT
"""

from __future__ import annotations

import base64
import json
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

ANSWER = json.dumps({"predictions": [[0.1] * 10], "model_version": "1"}).encode()
app = FastAPI()


@app.post("/v1/models/fashion-mnist:predict")
async def predict(request: Request) -> Response:
    body = json.loads(await request.body())
    images = [base64.b64decode(i["image_bytes"]["b64"], validate=True) for i in body["instances"]]
    if not images:
        return Response(status_code=400)
    return Response(ANSWER, media_type="application/json")


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, http="httptools", loop="uvloop")
