#!/usr/bin/env python3
"""One measured run of bench/twins.sh: waits for the machine to be quiet (optional),
runs the command, and appends one JSON line to RESULTS with the training examples/s and
how busy the rest of the machine was.

    twins_measure.py --results R.jsonl --model small --impl mixrank --run 1 \
        --mixrank-log RUN/train_log.jsonl --from-step 20 -- mixrank train ...
    twins_measure.py ... --torch-json OUT.json -- python bench/torch_small_mmoe.py ... --json OUT.json

- examples/s: mixrank = median over consecutive `train` lines of train_log.jsonl after
  --from-step of Δexamples / Δtrain_s (train_s excludes validation and checkpoints, and
  includes the input pipeline's waits); PyTorch = the twin's own median of windows;
- `others_busy_before`: % of all CPUs busy in the 3 s before the run (nothing of ours
  runs then); `others_busy_during`: % of all CPUs busy during the run with the run's own
  CPU time (its user + sys, children included) taken out — what other processes took;
- `load1_before`: the 1-minute load average before the run (includes our previous run's
  tail, so it lags).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count()


def busy_idle():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]
    return sum(f[:8]) - idle, idle


def sample_busy(seconds):
    b0, i0 = busy_idle()
    time.sleep(seconds)
    b1, i1 = busy_idle()
    return 100.0 * (b1 - b0) / max(1, (b1 - b0) + (i1 - i0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--impl", required=True)
    ap.add_argument("--run", type=int, required=True)
    ap.add_argument("--mixrank-log")
    ap.add_argument("--from-step", type=int, default=10)
    ap.add_argument("--torch-json")
    ap.add_argument("--quiet-pct", type=float, default=0, help="wait until others use < this %% of the CPUs (0: no wait)")
    ap.add_argument("--quiet-wait", type=float, default=600, help="longest wait for quiet, seconds")
    ap.add_argument("--log", help="the command's stdout+stderr go here")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    waited, t_wait = 0.0, time.time()
    busy_before = sample_busy(3)
    while a.quiet_pct and busy_before >= a.quiet_pct and time.time() - t_wait < a.quiet_wait:
        busy_before = sample_busy(3)
    waited = time.time() - t_wait - 3
    load1 = float(open("/proc/loadavg").read().split()[0])
    b0, i0 = busy_idle()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with open(a.log or os.devnull, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b1, i1 = busy_idle()
    ours = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    total_busy = (b1 - b0) / HZ
    others = max(0.0, 100.0 * (total_busy - ours) / (wall * NCPU))
    if rc != 0:
        sys.exit(f"{cmd[0]} failed ({rc}); see {a.log}")
    if a.mixrank_log:
        tr = [json.loads(l) for l in open(a.mixrank_log)]
        tr = [l for l in tr if l.get("event") == "train" and l["step"] >= a.from_step]
        w = [(y["examples"] - x["examples"]) / (y["train_s"] - x["train_s"]) for x, y in zip(tr, tr[1:])]
        eps = statistics.median(w)
    else:
        eps = json.load(open(a.torch_json))["examples_per_s"]
    rec = {"model": a.model, "impl": a.impl, "run": a.run, "examples_per_s": eps, "load1_before": load1,
           "others_busy_before": round(busy_before, 1), "others_busy_during": round(others, 1),
           "our_cpu_s": round(ours, 1), "wall_s": round(wall, 1), "waited_for_quiet_s": round(max(0.0, waited), 1)}
    with open(a.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
