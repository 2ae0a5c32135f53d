"""``odal simulate``: replay a fully labelled set as if annotators labelled it in the order each strategy asks for.

    odal simulate --images ../shared/datasets/raccoon --strategies random,uncertainty --seed-labels 8 --batch 16 \\
        --rounds 5 --steps 150 --repeats 3 --out sim-raccoon

Per repeat, a held-out test set (never selected, never trained on) and a seed set, the same for every strategy;
then, per round, the strategy picks ``--batch`` images from the unlabelled pool with the previous round's served
model, a real round trains (``simulate_run``), and the new version's test-set evaluation is recorded.  One extra
run labels the whole pool from the start: the full-data reference.  ``DIR/results.json`` is written after every
round (a rerun with the same ``--out`` goes on where it stopped), ``DIR/curves.png`` and ``DIR/summary.md`` after
every run (``simulate_report``).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from odal.common.errors import ConfigError
from odal.daemon.commands import simulate_data, simulate_report
from odal.daemon.commands import simulate_select as strategies
from odal.daemon.system.atomic import atomic_write_text, remove_tree


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="replay a labelled set in each strategy's order: the active-learning "
                       "benchmark (results.json, curves.png, summary.md)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a PASCAL VOC folder (images/ + annotations/, or JPEGImages/ + Annotations/)")
    source.add_argument("--export", help="a prodigy db-out file whose accepted answers are the ground truth")
    p.add_argument("--data-dir", help="with --export: the folder its image paths are relative to (default: its folder)")
    p.add_argument("--strategies", default="random,uncertainty", help="comma-separated, first is the baseline")
    p.add_argument("--seed-labels", type=int, default=8, help="images labelled before the first round")
    p.add_argument("--batch", type=int, default=16, help="images the strategy picks each round")
    p.add_argument("--rounds", type=int, default=5, help="selection rounds after the seed round")
    p.add_argument("--steps", type=int, default=None, help="train steps per round (default: odal init's)")
    p.add_argument("--repeats", type=int, default=3, help="repeats with other test and seed sets")
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of the images held out for testing")
    p.add_argument("--seed", type=int, default=0, help="the random seed of the splits and the random strategy")
    p.add_argument("--model", choices=("ssdlite", "tiny"), default="ssdlite",
                   help="ssdlite: fine-tune the pretrained start (default); tiny: the small SSD from scratch")
    p.add_argument("--no-full", action="store_true", help="skip the full-data reference run")
    p.add_argument("--out", required=True, help="the results folder (rerun with the same one to resume)")


def settings_of(args: argparse.Namespace, data: simulate_data.LabelledSet) -> dict:
    from odal.daemon.commands.init import DEFAULT_STEPS

    names = [name.strip() for name in args.strategies.split(",") if name.strip()]
    unknown = [name for name in names if name not in strategies.STRATEGIES]
    if not names or unknown or len(set(names)) != len(names):
        raise ConfigError(f"--strategies: distinct names among {', '.join(strategies.STRATEGIES)}, got {args.strategies!r}")
    for option in ("seed_labels", "batch", "rounds", "repeats"):
        if getattr(args, option) < 1:
            raise ConfigError(f"--{option.replace('_', '-')}: must be >= 1")
    if not 0 < args.test_fraction < 1:
        raise ConfigError("--test-fraction: must be in (0, 1)")
    test_size = max(1, round(len(data.items) * args.test_fraction))
    pool = len(data.items) - test_size
    if args.seed_labels + args.batch * args.rounds > pool:
        raise ConfigError(f"{pool} images in the pool: too few for {args.seed_labels} seed labels and "
                          f"{args.rounds} rounds of {args.batch}")
    return {"source": str(Path(args.images or args.export).resolve()), "strategies": names,
            "seed_labels": args.seed_labels, "batch": args.batch, "rounds": args.rounds,
            "steps": args.steps or DEFAULT_STEPS[args.model], "repeats": args.repeats, "test_size": test_size,
            "seed": args.seed, "model": args.model, "full": not args.no_full, "images": len(data.items),
            "labels": data.labels}


def write_template(out: Path, data: simulate_data.LabelledSet, settings: dict) -> None:
    """The workspace ``odal init`` writes (pretrained start included), once; every run copies its files."""
    from odal.daemon.commands import init as workspace_init

    template = out / "template"
    if (template / ".complete").is_file():
        return
    remove_tree(template)  # half-written by an interrupted run (its paths are absolute: written in place)
    workspace_init.write_workspace(template, data.data_dir, data.labels, settings["model"], settings["steps"],
                                   settings["batch"], header="odal simulate")
    atomic_write_text(template / ".complete", "")


def _die_with_parent() -> None:  # in the child, before exec: SIGTERM when odal simulate dies, even by SIGKILL
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_server(out: Path, models: dict[str, Path]) -> tuple[subprocess.Popen, str]:
    """``odal serve`` for every run's model base path (one model per run), on a free loopback port."""
    from odal.serving.process import free_port

    entries = "".join(f'  config {{\n    name: "{name}"\n    base_path: "{path}"\n    model_platform: "tensorflow"\n'
                      f'    model_version_policy {{ latest {{ num_versions: 1 }} }}\n  }}\n'
                      for name, path in models.items())
    atomic_write_text(out / "models.config", f"model_config_list {{\n{entries}}}\n")
    port = free_port()
    with open(out / "serve.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "odal.serving.server", f"--port={port}", "--rest_api_port=0",
             f"--model_config_file={out / 'models.config'}", "--file_system_poll_wait_seconds=1"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    return process, f"127.0.0.1:{port}"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop the worker and the server in the finally block, like Ctrl-C


class Progress:
    """One line per finished round with the ETA; the current stage on the same line when stdout is a TTY."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.tty = total, done, sys.stdout.isatty()
        self._times: list[float] = []

    def status(self, text: str) -> None:
        if self.tty:
            print(f"\r\033[K  {text[:110]}", end="", flush=True)

    def round_done(self, name: str, record: dict, count: bool = True) -> None:
        self.done += count
        self._times.append(record["seconds"])
        eta = sum(self._times) / len(self._times) * (self.total - self.done)
        value = record["mAP@0.5"]
        print(("\r\033[K" if self.tty else "") + f"{name} round {record['round']}: {record['labels']} labels, "
              f"mAP@0.5 {'-' if value is None else f'{value:.3f}'}, {record['seconds']:.0f} s | "
              f"{self.done}/{self.total} rounds, ETA {eta / 60:.0f} min", flush=True)


class Simulation:
    def __init__(self, out: Path, data, results, worker, client, address: str, progress: Progress):
        self.out, self.data, self.results, self.worker = out, data, results, worker
        self.client, self.address, self.progress = client, address, progress
        self._pixels: dict = {}

    def pixels(self, key: str):
        if key not in self._pixels:
            from odal.daemon.commands.simulate_run import read_pixels

            self._pixels[key] = read_pixels(self.data, key)
        return self._pixels[key]


def run(args: argparse.Namespace) -> int:
    from odal.daemon.system import log as logs

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs.configure("info", out / "simulate.log", stream=open(os.devnull, "w"))  # noqa: SIM115
    data = simulate_data.load(Path(args.images) if args.images else None, Path(args.export) if args.export else None,
                              Path(args.data_dir) if args.data_dir else None)
    settings = settings_of(args, data)
    from odal.daemon.commands.simulate_results import Results
    from odal.daemon.commands import simulate_run
    from odal.serving.client import ServingClient
    from odal.serving.process import stop_process_group

    results = Results(out / "results.json", settings)
    results.save()
    splits = {}
    for repeat in range(settings["repeats"]):
        if results.repeat(repeat) is None:
            made = simulate_data.split(list(data.items), seed=settings["seed"], repeat=repeat,
                                       test_size=settings["test_size"], seed_labels=settings["seed_labels"])
            results.set_repeat(repeat, made.test, made.seed, len(made.pool))
        stored = results.repeat(repeat)
        test = set(stored["test"])
        splits[repeat] = simulate_data.Split(stored["test"], stored["seed"], sorted(k for k in data.items if k not in test))
    names = {f"{s}-r{r}": (s, r) for r in range(settings["repeats"]) for s in settings["strategies"]}
    per_run = settings["rounds"] + 1
    total = per_run * (len(names) + settings["full"])
    done = sum(len(run["rounds"]) for run in results.data["runs"].values()) + len((results.data["full"] or {}).get(
        "rounds", []))
    print(f"odal simulate: {len(data.items)} images ({settings['test_size']} held out per repeat), labels "
          f"{', '.join(data.labels)}, {settings['model']} {settings['steps']} steps a round, strategies "
          f"{', '.join(settings['strategies'])}, {settings['repeats']} repeats; {done}/{total} rounds done; "
          f"results in {out}", flush=True)
    if done < total:
        write_template(out, data, settings)
        starts = [f"start-r{repeat}" for repeat in range(settings["repeats"])]
        bases = {name: out / "runs" / name / "models" / "odal" for name in [*names, "full-r0", *starts]}
        for path in bases.values():
            path.mkdir(parents=True, exist_ok=True)
        served = {name: path for name, path in bases.items()  # only the models something asks: no load for nothing
                  if len(data.labels) > 1 or (name in names and strategies.needs_model(names[name][0]))}
        server, address = start_server(out, served)
        worker = simulate_run.RecordingWorker(out / "worker.log")
        client = ServingClient(address, timeout=120)
        sim = Simulation(out, data, results, worker, client, address, Progress(total, done))
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            _run_all(sim, settings, splits)
        except KeyboardInterrupt:
            print(f"\nodal simulate: interrupted; the same command goes on from the last finished round "
                  f"({sim.progress.done}/{total} done)", flush=True)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
            client.close()
            worker.stop()
            stop_process_group(server, 30)
    print(simulate_report.write(out, results.data))
    return 0


def _run_all(sim: Simulation, settings: dict, splits: dict) -> None:
    from odal.daemon.commands import simulate_run

    out, results = sim.out, sim.results
    for repeat in range(settings["repeats"]):  # whole repeats first: they give the spread
        for strategy in settings["strategies"]:
            simulate_run.run_strategy(sim, strategy, repeat, splits[repeat])
            simulate_report.write(out, results.data)
    if settings["full"]:
        simulate_run.run_full(sim, splits[0])
        simulate_report.write(out, results.data)
