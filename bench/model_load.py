"""Bundled model load time: first load (GGUF de-quantization into a fresh cache) vs cached load.

Prints JSON: {"first_s", "second_s", "speedup"}; the cache goes to a temporary directory so the
first load really converts.
"""

from __future__ import annotations

import json
import os
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DISTILLGYM_CACHE"] = cache
        from agents.models import load_model

        start = time.perf_counter()
        load_model("smollm2-135m-instruct")
        first = time.perf_counter() - start
        start = time.perf_counter()
        load_model("smollm2-135m-instruct")
        second = time.perf_counter() - start
    print(json.dumps({"model": "smollm2-135m-instruct", "first_s": round(first, 2),
                      "second_s": round(second, 2), "speedup": round(first / second, 1)}))


if __name__ == "__main__":
    main()
