"""Summarise py-spy raw profiles (``tools/rayprobe.py --profile DIR``) into stage shares.

python tools/rayprobe_prof.py DIR [--rate 200] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re

# (category, predicate on one frame "func (file:line)"): the first rule that matches any
# frame of the stack wins (so "pack inside push_pull" is wire, "unique inside batches" is unique).
RULES = [
    ("ray: (de)serialize", lambda f: "ray/_private/serialization.py" in f),
    ("ray: submit .remote()", lambda f: "ray/actor.py" in f),
    (
        "ray: get/wait",
        lambda f: (
            "ray/_private/worker.py" in f
            and re.match(r"(get|wait|Worker.get_objects) ", f) is not None
        ),
    ),
    ("ray: metrics", lambda f: "ray/util/metrics.py" in f),
    ("wire pack/unpack", lambda f: "psfm/ps/wire.py" in f),
    ("routing/merge/split", lambda f: "psfm/ps/routing.py" in f),
    ("unique", lambda f: "unique_inverse_counts" in f),
    ("read+hash", lambda f: "Worker.batches" in f),
    ("forward/backward", lambda f: "forward_backward" in f or "Worker._inputs" in f),
    ("metrics/record", lambda f: "Worker._record" in f or "psfm/metrics.py" in f),
    ("shard push", lambda f: re.match(r"ParameterShard\.push ", f) is not None),
    ("shard pull", lambda f: re.match(r"ParameterShard\.pull ", f) is not None),
    ("shard other psfm", lambda f: "psfm/ps/shard.py" in f),
    ("worker other psfm", lambda f: "psfm/" in f),
    (
        "ray: task exec/return",
        lambda f: "function_manager.py" in f or "_raylet" in f or "tracing_helper" in f,
    ),
    ("ray: idle main loop", lambda f: "main_loop" in f),
]


def classify(frames: list[str]) -> str:
    for cat, pred in RULES:
        for f in frames:
            if pred(f):
                return cat
    return "other: " + (frames[-1][:60] if frames else "?")


def load(path: str) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    cats, leaves, threads = collections.Counter(), collections.Counter(), collections.Counter()
    for line in open(path):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, n = line.rsplit(" ", 1)
        n = int(n)
        frames = stack.split(";")
        thread = frames[0]
        frames = frames[1:]
        threads[thread.split(":")[-1].strip()] += n
        cats[classify(frames)] += n
        leaves[frames[-1][:90] if frames else "?"] += n
    return cats, leaves, threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    for r in ("worker", "shard"):
        tot_c, tot_l, tot_t = collections.Counter(), collections.Counter(), collections.Counter()
        for p in sorted(glob.glob(os.path.join(a.dir, f"{r}-*.txt"))):
            c, lv, t = load(p)
            tot_c += c
            tot_l += lv
            tot_t += t
        n = sum(tot_c.values())
        if not n:
            continue
        print(f"== {r}s: {n} samples = {n / a.rate:.2f} s sampled; threads {dict(tot_t)}")
        for cat, k in tot_c.most_common():
            print(f"  {cat:40s} {k / a.rate:6.2f}s {100 * k / n:5.1f}%")
        print("  top leaves:")
        for leaf, k in tot_l.most_common(a.top):
            print(f"    {100 * k / n:5.1f}%  {leaf}")


if __name__ == "__main__":
    main()
