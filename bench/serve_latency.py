"""Latency of the model server and of `pipeline-predict`.

Start the server first, e.g.
  mlflow models serve -m models:/<name>@champion --env-manager local -h 127.0.0.1 -p 5001
then run from the project root:
  python bench/serve_latency.py --url http://127.0.0.1:5001 [--image some.png]
Sends N single-image requests (test images from data/prepared) and prints p50/p99 in ms,
then times one `pipeline-predict` run on one image file (wall time, model load included).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5001")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--image", type=Path, help="file for pipeline-predict (default: a test image)")
    parser.add_argument("--predict-args", default="", help="extra args, e.g. '--model-file models/model.keras'")
    args = parser.parse_args()

    x = np.load(args.prepared / "x_test.npy", mmap_mode="r")
    bodies = [{"inputs": np.asarray(x[i:i + 1], dtype=np.float32).tolist()}
              for i in range(min(args.requests, len(x)))]
    session = requests.Session()
    for body in bodies[:5]:  # warm-up, not counted
        session.post(f"{args.url}/invocations", json=body, timeout=30).raise_for_status()
    times = []
    for i in range(args.requests):
        start = time.perf_counter()
        session.post(f"{args.url}/invocations", json=bodies[i % len(bodies)], timeout=30).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    print(f"serve: {args.requests} single-image requests: p50 {np.percentile(times, 50):.2f} ms, "
          f"p99 {np.percentile(times, 99):.2f} ms, mean {np.mean(times):.2f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        image = args.image
        if image is None:
            from PIL import Image

            img = np.asarray(x[0])
            image = Path(tmp) / "test0.png"
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(image)
        cmd = [sys.executable, "-m", "pipeline.predict", str(image), *args.predict_args.split()]
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"pipeline-predict failed: {res.stderr.strip()[-500:]}")
    print(f"predict: one file, wall {wall:.2f} s: {res.stdout.strip()}")


if __name__ == "__main__":
    main()
