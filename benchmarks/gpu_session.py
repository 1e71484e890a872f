"""A lent GPU's whole job in one command that ends inside its lease: speed tables, then the schema
comparison (5 schemas x 3 seeds) and a continued demo model trained side by side on the one GPU.

    python benchmarks/gpu_session.py --out /tmp/gpu --results /tmp/gpu-results --archive $OUT/results.tar.gz
        [--seconds 560] [--device cuda]

The lease is short (minutes) and each start of a machine costs part of it, so every step has a time
limit from ``--seconds`` and a step that fails or overruns is logged and skipped, never fatal:

1. ``training.py``: step time and achieved GFLOP/s of the demo and the paper network (64x256x256), in bf16
   autocast and fp32 (the precision the Trainer trains in);
2. ``inference.py``: one forward and ``segment`` end to end on a 512x512x120 CT, bf16;
3. a probe: as many demo-network training steps at once as there will be training processes, which
   gives the step time under that load, hence how many iterations fit the time left;
4. ``curriculum.py`` (``--jobs`` = all runs at once, ``--batch`` blocks a step) and ``recipe.py``
   (``continue-poly`` from ``--demo-init``, the same batch, ``--demo-loader-workers`` sampling its blocks,
   optionally on phantoms with the right lobe's tongue) started together, with GPU utilisation logged every
   second;
5. everything small enough (tables, logs, result rows, the continued model) packed into
   ``--archive`` (one file: the lease brings few back), the continued run's last checkpoint beside it
   (``demo-last.safetensors``), and a summary printed last.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
from training import NETWORKS, time_steps

from livertumor.training import SCHEMAS

HERE = Path(__file__).resolve().parent
SCHEMA_EPOCHS = 12  # divisible by 2 and 3: every schema's stages (and the cascade's networks) equal
DEMO_EPOCHS = 8
#: Seconds a run spends outside its training steps, guessed high: writing its phantoms, preparing
#: them, starting CUDA; validation per epoch; the curriculum runs' test set at the end.
SETUP_S, DEMO_SETUP_S, VALIDATION_S, DEMO_VALIDATION_S, TEST_S = 60, 110, 6, 9, 70
#: Training steps run slower than the probe's (data loading, the loss's sync, validation's CPU work). 1.5
#: held at batch 1-2 in the first lease; at batch 8 the second lease's runs took 1.2x the probe's step,
#: validation included, so its ``--slowdown 2.0`` left a third of the lease unused.
SLOWDOWN = 1.5
PACK_S = 20


class Session:
    """The clock and the log of one session."""

    def __init__(self, seconds: float, results: Path) -> None:
        self.deadline = time.monotonic() + seconds
        self.results = results
        results.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} {self.left():5.0f} s left] {message}"
        print(line, flush=True)
        with open(self.results / "session.log", "a") as handle:
            handle.write(line + "\n")

    def run(self, name: str, command: list[str], limit: float) -> str:
        """Run ``command`` for at most ``limit`` seconds (and not past the deadline); its output goes to
        ``RESULTS/name.txt`` and is returned ('' when it failed or overran)."""
        limit = min(limit, self.left() - PACK_S)
        if limit < 5:
            self.say(f"{name}: skipped, no time left")
            return ""
        self.say(f"{name}: {' '.join(command)} (limit {limit:.0f} s)")
        started = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
        except OSError as error:
            self.say(f"{name}: could not start: {error}")
            return ""
        except subprocess.TimeoutExpired as expired:
            output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
            (self.results / f"{name}.txt").write_text(output + "\n[timed out]\n")
            self.say(f"{name}: timed out after {limit:.0f} s")
            return ""
        (self.results / f"{name}.txt").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr[-20000:])
        self.say(f"{name}: exit {done.returncode} after {time.monotonic() - started:.0f} s")
        return done.stdout if done.returncode == 0 else ""


def _probe_worker(device: str, batch: int, count: int, barrier, steps: list) -> None:
    config, block, _ = NETWORKS["demo"]
    seconds, _ = time_steps(config, block, batch, "library", torch.device(device), count, 10, "fp32", barrier.wait)
    steps.append(seconds)


def probe_step_seconds(session: Session, device: str, processes: int, batch: int, count: int) -> float | None:
    """Median demo-network training step (fp32, ``batch`` blocks) while ``processes`` processes time
    theirs at once (they start timing together, after each one's start-up and warm-up)."""
    context = multiprocessing.get_context("spawn")  # CUDA does not survive a fork
    with context.Manager() as manager:
        barrier, steps = manager.Barrier(processes, timeout=120), manager.list()
        arguments = (device, batch, count, barrier, steps)
        workers = [context.Process(target=_probe_worker, args=arguments) for _ in range(processes)]
        session.say(f"probe: {processes} processes at once, {count} steps each")
        for worker in workers:
            worker.start()
        end = time.monotonic() + max(5.0, min(150.0, session.left() - 200))
        for worker in workers:
            worker.join(timeout=max(0.0, end - time.monotonic()))
            if worker.is_alive():
                worker.kill()
        measured = sorted(steps)
    session.say(f"probe: step seconds {measured}")
    return statistics.median(measured) if measured else None


def utilisation_logger(results: Path) -> subprocess.Popen | None:
    query = "--query-gpu=timestamp,utilization.gpu,memory.used,power.draw"
    try:
        return subprocess.Popen(
            ["nvidia-smi", query, "--format=csv,noheader,nounits", "-l", "1"],
            stdout=open(results / "gpu-utilisation.csv", "w"),
            stderr=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return None


def mean_utilisation(results: Path) -> str:
    """Busy share, memory and power over the logged seconds: "busy" counts any kernel running, so the power
    drawn says how much of the chip the kernels filled."""
    rows = [line.split(", ") for line in (results / "gpu-utilisation.csv").read_text().splitlines() if line]
    samples = []
    for row in rows:
        try:
            samples.append(tuple(float(value) for value in row[1:4]))
        except ValueError:  # "[N/A]" or a line cut off when the logger stopped
            continue
    if not samples:
        return "no utilisation samples"
    busy, memory, power = zip(*samples)
    return (
        f"GPU utilisation over {len(busy)} s of training: mean {statistics.mean(busy):.0f} %, median "
        f"{statistics.median(busy):.0f} %; memory used up to {max(memory):.0f} MiB; power mean "
        f"{statistics.mean(power):.0f} W, at most {max(power):.0f} W"
    )


def pack(out: Path, results: Path, archive: Path) -> None:
    """Tables, logs, result rows and the continued demo model into the ``archive`` (.tar.gz); the demo run's
    last checkpoint beside it (too large to share the archive's size limit)."""
    for checkpoint in sorted(out.glob("demo/work-*/joint-last.safetensors"))[:1]:
        shutil.copyfile(checkpoint, archive.with_name("demo-last.safetensors"))
    patterns = [
        "curriculum/result-*.json",
        "curriculum/model-*.work/*-log.csv",
        "demo/work-*/*-log.csv",
        "demo/model-*/*",
        "demo/*.md",
        "demo/*.png",
    ]
    with tarfile.open(archive, "w:gz") as packed:
        for pattern in patterns:
            for path in sorted(out.glob(pattern)):
                packed.add(path, arcname=str(path.relative_to(out)))
        for path in sorted(results.iterdir()):
            packed.add(path, arcname=f"session/{path.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (phantoms, models)")
    parser.add_argument("--results", type=Path, required=True, help="the session's tables and logs")
    parser.add_argument("--archive", type=Path, required=True, help="everything worth keeping, one .tar.gz")
    parser.add_argument("--seconds", type=float, default=560, help="the whole session's time")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-cases", type=int, default=40)
    parser.add_argument("--test-cases", type=int, default=20)
    parser.add_argument("--demo-train-cases", type=int, default=200)
    parser.add_argument("--demo-validation-cases", type=int, default=12)
    parser.add_argument("--demo-train-seed", type=int, default=500)
    parser.add_argument("--demo-init", default="demo-curriculum", help="the model the demo run continues")
    parser.add_argument("--demo-loader-workers", type=int, default=4, help="its block-sampling processes")
    parser.add_argument("--demo-lower-right-lobe", action="store_true", help="its phantoms with the lobe's tongue")
    parser.add_argument("--shape", nargs=3, default=["96", "160", "160"], help="the comparison's phantoms")
    parser.add_argument("--paper-block", nargs=3, default=["64", "256", "256"])
    parser.add_argument("--skip-speed", action="store_true", help="no speed tables (steps 1-2)")
    parser.add_argument("--schemas", nargs="+", default=list(SCHEMAS))
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"], help="training seeds per schema")
    parser.add_argument("--probe-steps", type=int, default=60)
    parser.add_argument("--slowdown", type=float, default=SLOWDOWN, help="training step / probe step, guessed")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="blocks per step of every comparison run, whole volumes and patches alike (the first lease ran "
        "batch 1 and 2: 15 processes at batch 1 leave an H200 waiting on kernel launches)",
    )
    args = parser.parse_args()
    session = Session(args.seconds, args.results)
    python = sys.executable
    session.say(f"python {sys.version.split()[0]}; {args.device}")
    session.run("gpu", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"], 10)

    if not args.skip_speed:
        training = [python, str(HERE / "training.py"), "--device", args.device, "--variants", "library"]
        training += ["--paper-block", *args.paper_block, "--steps", "10", "--warmup", "3"]
        for precision in ("bf16", "fp32"):
            markdown = str(args.results / f"training-{precision}.md")
            session.run(f"training-{precision}", [*training, "--precision", precision, "--markdown", markdown], 75)
        inference = [python, str(HERE / "inference.py"), "--device", args.device, "--precision", "bf16"]
        session.run("inference-bf16", [*inference, "--backends", "torch", "--repeats", "3"], 100)

    runs = len(args.seeds) * len(args.schemas)
    step = probe_step_seconds(session, args.device, runs + 1, args.batch, args.probe_steps) or 0.05
    window = session.left() - PACK_S - TEST_S  # seconds until every training run must be done
    step *= args.slowdown
    iterations = int((window - SETUP_S - SCHEMA_EPOCHS * VALIDATION_S) / step / SCHEMA_EPOCHS)
    # The demo run samples its blocks from larger phantoms and validates on them: guessed a third slower.
    demo_iterations = int((window - DEMO_SETUP_S - DEMO_EPOCHS * DEMO_VALIDATION_S) / (1.3 * step) / DEMO_EPOCHS)
    plan = {"probe_step_s": step / args.slowdown, "window_s": window, "iterations": iterations}
    plan["demo_iterations"] = demo_iterations
    session.say(f"plan: {json.dumps(plan)}")
    (args.results / "plan.json").write_text(json.dumps(plan))
    if iterations < 5:
        session.say("too little time left to train")
        pack(args.out, args.results, args.archive)
        return

    logger = utilisation_logger(args.results)
    curriculum = [python, str(HERE / "curriculum.py"), "--out", str(args.out / "curriculum"), "--device", args.device]
    curriculum += ["--train-cases", str(args.train_cases), "--test-cases", str(args.test_cases)]
    curriculum += ["--shape", *args.shape, "--epochs", str(SCHEMA_EPOCHS), "--iterations", str(iterations)]
    curriculum += ["--schemas", *args.schemas, "--seeds", *args.seeds, "--jobs", str(runs), "--phantom-workers", "8"]
    batch = str(args.batch)
    curriculum += ["--whole-batch", batch, "--patch-batch", batch, "--loader-workers", "2"]
    recipe = [python, str(HERE / "recipe.py"), "--out", str(args.out / "demo"), "--device", args.device]
    recipe += ["--train-cases", str(args.demo_train_cases), "--validation-cases", str(args.demo_validation_cases)]
    recipe += ["--train-seed", str(args.demo_train_seed), "--stages", str(DEMO_EPOCHS)]
    recipe += ["--iterations", str(demo_iterations), "--variants", "continue-poly", "--init", args.demo_init]
    recipe += ["--whole-batch", batch, "--loader-workers", str(args.demo_loader_workers), "--phantom-workers", "8"]
    recipe += ["--lower-right-lobe"] if args.demo_lower_right_lobe else []
    recipe += ["--markdown", str(args.out / "demo" / "recipe.md")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    jobs = {}
    for name, command in (("curriculum", curriculum), ("recipe", recipe)):
        session.say(f"{name}: {' '.join(command)}")
        handle = open(args.results / f"{name}.txt", "w")
        jobs[name] = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
    while any(job.poll() is None for job in jobs.values()) and session.left() > PACK_S:
        time.sleep(2)
    for name, job in jobs.items():
        if job.poll() is None:
            session.say(f"{name}: still running at the deadline, stopped")
            job.kill()
        else:
            session.say(f"{name}: exit {job.returncode}")
    if logger:
        logger.terminate()
        session.say(mean_utilisation(args.results))
    tabulate = [*curriculum, "--jobs", "0", "--markdown", str(args.results / "curriculum.md")]
    session.run("curriculum-table", tabulate, 15)
    pack(args.out, args.results, args.archive)
    session.say("packed")
    for name in ("training-bf16.md", "training-fp32.md", "curriculum.md"):
        path = args.results / name
        if path.exists():
            print(f"\n== {name}\n" + path.read_text()[-3000:])
    recipe_table = args.out / "demo" / "recipe.md"
    if recipe_table.exists():
        print("\n== recipe.md\n" + recipe_table.read_text())


if __name__ == "__main__":
    main()
