"""A long reliability run over one cache, outside CI: ``python -m tests.soak --minutes 30``.

Four worker processes (``--workers``) share one cache folder and loop over random actions:

- ``extract``: a random subset of the images, in random order, through
  :class:`featx.Extractor` with the cache (TensorFlow-free :class:`NumpyBackbone`, so a
  killed worker is back within a second); every result is compared, bit for bit, with
  vectors computed once without a cache;
- ``verify``: ``EmbeddingCache.verify()`` with its default grace period (it must never
  find a damaged shard, a wrong row or a damaged index: nothing here corrupts files, so
  any such finding is a bug; unused shards, orphans and temporary files are what kills
  leave, and are counted);
- ``clear``: ``EmbeddingCache.clear()``, now and then;
- ``read``: every image's key looked up straight in the cache, each vector found compared
  with the reference (a stale or misplaced vector is a failure).

Meanwhile the supervisor sends SIGKILL to a random worker at random intervals (0.1 to
``--max-gap`` seconds) and starts a new one. At the end it stops the workers, runs
``verify(grace=0)`` twice (the second must find nothing), extracts everything twice (the
second run must be all hits) and reads every vector back. It prints one JSON report: kills
(by the action they interrupted), resumes (a restarted worker's first extract that found
vectors cached), actions finished, vectors checked, findings, and failures; the exit status
is 0 only if nothing was lost or stale and the cache ended clean.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from featx.cache import VERIFY_FINDINGS

HERE = Path(__file__).resolve().parent
# Findings a kill or a race may leave (verify removes them), and those nothing here may cause.
EXPECTED_FINDINGS = ("unreferenced_shards", "orphan_files", "temp_files")
FORBIDDEN_FINDINGS = tuple(k for k in VERIFY_FINDINGS if k not in EXPECTED_FINDINGS)
ACTIONS = {"extract": 0.55, "read": 0.2, "verify": 0.2, "clear": 0.05}


def _helpers():
    sys.path.insert(0, str(HERE))
    from _extract_worker import NumpyBackbone, write_images

    return NumpyBackbone, write_images


def _extractor(cache_dir: Path | None):
    from featx import Extractor

    NumpyBackbone, _ = _helpers()
    return Extractor(NumpyBackbone(), batch_size=8, cache_dir=cache_dir, verbose=False)


def _event(log: Path, **fields) -> None:
    with open(log, "a") as f:  # one line per event, appended: a kill loses at most one line
        f.write(json.dumps(fields) + "\n")


def worker(folder: Path, name: str, seed: int, pause: float) -> None:
    """Loop over random actions until killed; log each to ``<name>.jsonl``."""
    import warnings

    from featx.cache import EmbeddingCache

    warnings.simplefilter("ignore")  # warnings are expected here (kills, clears)
    rng = random.Random(seed)
    paths = (folder / "paths.txt").read_text().split()
    reference = np.load(folder / "reference.npy")
    keys = (folder / "keys.txt").read_text().split()
    cache_dir = folder / "cache"
    log = folder / f"{name}.jsonl"
    first_extract = True
    while True:
        action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        (folder / f"{name}.action").write_text(action)
        if action == "extract":
            chosen = rng.sample(range(len(paths)), rng.randint(8, len(paths)))
            emb = _extractor(cache_dir).extract([paths[i] for i in chosen])
            stale = int((np.abs(emb.X - reference[chosen]).max(axis=1) > 0).sum())
            _event(
                log,
                action=action,
                n=len(chosen),
                hits=emb.cache_hits,
                misses=emb.cache_misses,
                stale=stale,
                first=first_extract,
            )
            first_extract = False
        elif action == "read":
            found, got = EmbeddingCache(cache_dir).get(
                _fingerprint(folder), keys, reference.shape[1]
            )
            stale = int((np.abs(got[found] - reference[found]).max(axis=1) > 0).sum())
            _event(log, action=action, found=int(found.sum()), stale=stale)
        elif action == "verify":
            report = EmbeddingCache(cache_dir).verify()
            _event(
                log,
                action=action,
                integrity=report["integrity"],
                **{k: report[k] for k in (*EXPECTED_FINDINGS, *FORBIDDEN_FINDINGS)},
            )
        else:
            _event(log, action=action, cleared=EmbeddingCache(cache_dir).clear())
        (folder / f"{name}.action").write_text("idle")
        time.sleep(rng.uniform(0, pause))


def _busy_worker(folder: Path, names: list[str], rng: random.Random) -> tuple[str, str]:
    """A worker in the middle of an action (waiting up to a second for one), and the action:
    kills land in extracts, verifies and clears, not in the pauses between them."""
    deadline = time.monotonic() + 1.0
    while True:
        name = rng.choice(names)
        action_file = folder / f"{name}.action"
        try:
            action = action_file.read_text() or "starting"
        except FileNotFoundError:
            action = "starting"
        if action != "idle" or time.monotonic() > deadline:
            return name, action
        time.sleep(0.002)


def _fingerprint(folder: Path) -> str:
    return (folder / "fingerprint.txt").read_text().strip()


def _start(folder: Path, name: str, seed: int, pause: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    with open(folder / f"{name}.log", "a") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.soak",
                "--worker",
                name,
                "--folder",
                str(folder),
                "--seed",
                str(seed),
                "--pause",
                str(pause),
            ],
            cwd=HERE.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def soak(
    minutes: float,
    n_workers: int,
    n_images: int,
    max_gap: float,
    seed: int,
    pause: float,
    folder: Path,
) -> dict:
    from featx.cache import EmbeddingCache

    _, write_images = _helpers()
    rng = random.Random(seed)
    paths = write_images(folder / "images", n_images)
    reference = _extractor(None).extract(paths)
    np.save(folder / "reference.npy", reference.X)
    (folder / "paths.txt").write_text("\n".join(paths) + "\n")
    ex = _extractor(None)
    (folder / "fingerprint.txt").write_text(ex.fingerprint)
    (folder / "keys.txt").write_text("\n".join(_content_keys(paths)) + "\n")

    procs = {
        f"w{i}": _start(folder, f"w{i}", rng.randrange(2**31), pause) for i in range(n_workers)
    }
    kills: Counter = Counter()
    exits: list[str] = []
    restarts = 0
    deadline = time.monotonic() + 60 * minutes
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.1, max_gap))
        for name, proc in procs.items():  # a worker that died by itself is a failure
            if proc.poll() is not None:
                exits.append(f"{name} exited with {proc.returncode}")
                procs[name] = _start(folder, name, rng.randrange(2**31), pause)
        name, action = _busy_worker(folder, sorted(procs), rng)
        procs[name].send_signal(signal.SIGKILL)
        procs[name].wait()
        kills[action] += 1
        (folder / f"{name}.action").unlink(missing_ok=True)
        procs[name] = _start(folder, name, rng.randrange(2**31), pause)
        restarts += 1
    for proc in procs.values():
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    events = [
        json.loads(line)
        for log in sorted(folder.glob("w*.jsonl"))
        for line in log.read_text().splitlines()
        if line.strip()
    ]
    done = Counter(e["action"] for e in events)
    stale = sum(e.get("stale", 0) for e in events)
    forbidden = {k: sum(e.get(k, 0) for e in events) for k in FORBIDDEN_FINDINGS}
    bad_integrity = sum(e["integrity"] != "ok" for e in events if e["action"] == "verify")
    extracts = [e for e in events if e["action"] == "extract"]

    final = EmbeddingCache(folder / "cache").verify(grace=0)
    again = EmbeddingCache(folder / "cache").verify(grace=0)
    first = _extractor(folder / "cache").extract(paths)
    second = _extractor(folder / "cache").extract(paths)
    found, got = EmbeddingCache(folder / "cache").get(
        ex.fingerprint, _content_keys(paths), reference.X.shape[1]
    )
    final_stale = int((first.X != reference.X).any(axis=1).sum())
    final_stale += int((second.X != reference.X).any(axis=1).sum())
    final_stale += int((got[found] != reference.X[found]).any(axis=1).sum())
    clean = again["ok"] and all(again[k] == 0 for k in (*EXPECTED_FINDINGS, *FORBIDDEN_FINDINGS))
    report = {
        "minutes": minutes,
        "workers": n_workers,
        "images": n_images,
        "pause": pause,
        "kills": sum(kills.values()),
        "kills_by_action": dict(kills),
        "restarts": restarts,
        "workers_that_died_by_themselves": exits,
        "actions_finished": dict(done),
        "resumes": sum(1 for e in extracts if e["first"] and e["hits"] > 0),
        "vectors_checked": sum(e["n"] for e in extracts)
        + sum(e.get("found", 0) for e in events)
        + 2 * n_images
        + int(found.sum()),
        "cache_hits": sum(e["hits"] for e in extracts),
        "cache_misses": sum(e["misses"] for e in extracts),
        "vectors_cleared": sum(e.get("cleared", 0) for e in events),
        "left_by_kills_and_races": {k: sum(e.get(k, 0) for e in events) for k in EXPECTED_FINDINGS},
        "stale_vectors": stale + final_stale,
        "forbidden_findings": forbidden,
        "verify_integrity_failures": bad_integrity,
        "final_verify": {
            k: final[k] for k in ("ok", "n_vectors", *EXPECTED_FINDINGS, *FORBIDDEN_FINDINGS)
        },
        "final_verify_again_clean": clean,
        "final_second_extract_all_hits": second.cache_hits == n_images,
    }
    report["passed"] = bool(
        report["stale_vectors"] == 0
        and not any(forbidden.values())
        and bad_integrity == 0
        and not exits
        and final["ok"]
        and clean
        and report["final_second_extract_all_hits"]
    )
    return report


def _content_keys(paths: list[str]) -> list[str]:
    from featx._pipeline import content_key

    return [content_key(Path(p).read_bytes()) for p in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument(
        "--max-gap", type=float, default=2.0, help="longest wait in seconds between two kills"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pause", type=float, default=0.05, help="longest pause of a worker between actions"
    )
    parser.add_argument(
        "--folder", type=Path, default=None, help="work folder (default: a new temporary folder)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.folder, args.worker, args.seed, args.pause)
        return 0
    folder = args.folder or Path(tempfile.mkdtemp(prefix="featx-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    report = soak(
        args.minutes, args.workers, args.images, args.max_gap, args.seed, args.pause, folder
    )
    report["folder"] = str(folder)
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
