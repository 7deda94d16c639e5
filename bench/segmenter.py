"""The stub's detector: quality against ground truth and speed.

    python -m bench.segmenter            # 50 scenes of 512x512, 20 timed runs of 1024x1024

Prints a table and writes bench/segmenter.json. The process is pinned to one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from ml_stub.detector import DetectorOptions, decode, detect, detect_array, encode_png
from ml_stub.scenes import encode, make_scene, to_uint8

OUT = Path(__file__).with_name("segmenter.json")


def quality(count: int, size: int, seed: int) -> dict[str, object]:
    options = DetectorOptions()
    scores, clean_fp = [], []
    for i in range(count):
        scene = make_scene(size, size, seed=seed + i, lookalikes=2, ships=4)
        mask = detect_array(to_uint8(scene.intensity).astype(np.float32), options)
        union = (mask | scene.truth).sum()
        scores.append(float((mask & scene.truth).sum() / union) if union else 1.0)
        sea = make_scene(size, size, seed=seed + 10_000 + i, slicks=0, lookalikes=2, ships=4)
        clean_fp.append(float(detect_array(to_uint8(sea.intensity).astype(np.float32),
                                           options).mean()))
    return {"scenes": count, "size": size, "mean_iou": statistics.mean(scores),
            "worst_iou": min(scores), "median_iou": statistics.median(scores),
            "clean_sea_mean_false_fraction": statistics.mean(clean_fp),
            "clean_sea_worst_false_fraction": max(clean_fp)}


def speed(runs: int, size: int) -> dict[str, float]:
    options = DetectorOptions()
    array = to_uint8(make_scene(size, size, seed=1).intensity)
    png = encode(array, "PNG")
    values = array.astype(np.float32)
    detect_array(values, options)  # warm up
    detect_ms, service_ms = [], []
    for _ in range(runs):
        start = time.perf_counter()
        detect_array(values, options)
        detect_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        encode_png(detect(decode(png), options))  # what one /segment call computes
        service_ms.append((time.perf_counter() - start) * 1000)
    return {"size": size, "runs": runs, "detect_ms_median": statistics.median(detect_ms),
            "detect_ms_best": min(detect_ms),
            "decode_detect_encode_ms_median": statistics.median(service_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    q = quality(args.scenes, args.size, args.seed)
    s = speed(args.runs, 1024)
    print(f"quality on {q['scenes']} scenes of {q['size']}x{q['size']} with look-alikes:")
    print(f"  mean IoU {q['mean_iou']:.3f}   worst IoU {q['worst_iou']:.3f}   "
          f"median {q['median_iou']:.3f}")
    print(f"  clean sea: false oil fraction mean {q['clean_sea_mean_false_fraction']:.5f}, "
          f"worst {q['clean_sea_worst_false_fraction']:.5f}")
    print(f"speed on 1024x1024 8-bit, one core: detect {s['detect_ms_median']:.1f} ms "
          f"(best {s['detect_ms_best']:.1f}), decode+detect+encode "
          f"{s['decode_detect_encode_ms_median']:.1f} ms")
    OUT.write_text(json.dumps({"quality": q, "speed": s}, indent=1))
    print(f"written {OUT}")



if __name__ == "__main__":
    main()
