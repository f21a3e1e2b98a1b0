"""Phases of the README quick start's search (--budget-mb 70 --generations 3 --population 8, default
space, CPU): wall and process CPU seconds of model load, budget check, CCDS (embedding, k-means),
statistics (+ the exact size check), dense reference, then three screens and two full evaluations
(materialise and forward + KL apart) and one full evaluation per micro-batch size. The size table
and the export are not included (see search_throughput.py and the CLI's own timings).

    python benchmarks/quickstart_phases.py RUN_DIR [SAMPLES SEQ_LEN]    # from the checkout's root
"""
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evo.search.loop import SearchSpec, open_session
from evo.constants import FINAL_STAGE, SCREEN_STAGE

T0 = time.perf_counter()
last = {"t": T0, "name": "start", "cpu": time.process_time()}
def status(m):
    now = time.perf_counter(); cpu = time.process_time()
    print(f"[{now - T0:7.1f}s wall] (+{now - last['t']:.1f}s wall, +{cpu - last['cpu']:.1f}s cpu since '{last['name']}') {m}", flush=True)
    last.update(t=now, name=m, cpu=cpu)
done_steps = {}
def progress(p):
    if p.step not in done_steps:
        done_steps[p.step] = (time.perf_counter(), time.process_time())
        print(f"    step {p.step} starts", flush=True)
    elif p.total and p.done >= p.total:
        w, c = done_steps[p.step]
        print(f"    step {p.step}: {p.done} {p.unit}: {time.perf_counter() - w:.1f}s wall, {time.process_time() - c:.1f}s cpu", flush=True)

run = Path(sys.argv[1]); mode = sys.argv[2] if len(sys.argv) > 2 else "all"
kw = dict(samples=int(sys.argv[3]), seq_len=int(sys.argv[4])) if len(sys.argv) > 4 else {}
spec = SearchSpec(budget_bytes=70_000_000, generations=3, population=8, **kw)
print("threads", torch.get_num_threads(), flush=True)
resume = (run / "run.json").exists()
session = open_session(spec, run, resume=resume, device="cpu", status=status, progress=progress)
status("session open")
ev = session.evaluator
rng = random.Random(0)
def genome():
    return [rng.randrange(len(g.choices)) if g.kind != "drop" else 0 for g in session.genes]
print("gene example", session.genes[0], flush=True)
for stage, n in ((SCREEN_STAGE, 3), (FINAL_STAGE, 2)):
    for i in range(n):
        cfg = session.config_of(genome())
        t = time.process_time(); sw, comp = ev.materialise(cfg); tm = time.process_time() - t
        t = time.process_time(); q = ev.evaluate(cfg, stage); tf = time.process_time() - t
        print(f"stage {stage}: materialise {tm:.2f}s cpu ({sw} swapped, {comp} compressed), evaluate(after) {tf:.2f}s cpu q={q:.4f}", flush=True)
    for bs in ((None, 4, 2) if stage == FINAL_STAGE else ()):
        import dataclasses
        ev.fitness = dataclasses.replace(ev.fitness, batch_size=bs)
        t = time.process_time(); ev.evaluate(cfg, stage); print(f"  full eval with batch_size={bs}: {time.process_time() - t:.2f}s cpu", flush=True)
        ev.fitness = dataclasses.replace(ev.fitness, batch_size=None)
