"""Runs the spec fuzzer (tests/fuzz_specs.py) for a long time, in worker processes that a hang or a memory
blow-up cannot take down with it, and writes each distinct defect to a folder.

    python tools/fuzz.py --cases 20000 --out fuzz-out [--seed 0] [--minimize]

A worker runs cases one after another in-process (each command under an alarm, the whole worker under
an address-space limit, RLIMIT_AS); the parent kills a worker that does not answer within the per-case
timeout and counts a hang, and starts a new one. Defects are deduplicated by their signature - the
exception's type and the innermost netspec frame - and each gets a folder with its smallest spec, the
traceback and the list of cases that showed it; `summary.md` tabulates them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(
    seed: int, timeout: float, memory_mb: int, time_fraction: float, train_fraction: float, minimize: bool
) -> None:
    """Reads case numbers on stdin, answers one JSON line per case on stdout."""
    sys.path.insert(0, str(ROOT))
    import random

    import torch  # noqa: F401 - imported before the address-space limit, which it would count

    from tests.fuzz_specs import Generator, memory_limit, run_case
    from tests.fuzz_specs import minimize as shrink

    gen = Generator(seed)
    workdir = Path(tempfile.mkdtemp(prefix="netspec-fuzz-"))
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    with memory_limit(memory_mb):
        for line in sys.stdin:
            request = json.loads(line)
            i = request["case"]
            case = gen.case(i)
            outcome = run_case(case, workdir, timeout, time_fraction, random.Random(f"{seed}:{i}:time"), train_fraction)
            answer = {
                "case": i,
                "accepted": outcome.accepted,
                "timed": outcome.timed,
                "trained": outcome.trained,
                "defects": [],
            }
            for d in outcome.defects:
                found = {"signature": d.signature, "where": d.where, "command": d.command, "detail": d.detail}
                if minimize and request.get("minimize"):
                    small = shrink(case, d, workdir, timeout)
                    found["minimal"] = small.text
                answer["defects"].append(found)
            answer["spec"] = case.text if answer["defects"] else None
            answer["name"] = case.name
            answer["how"] = case.how
            out.write(json.dumps(answer) + "\n")
            out.flush()


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--seed",
            str(args.seed),
            "--timeout",
            str(args.timeout),
            "--memory-mb",
            str(args.memory_mb),
            "--time-fraction",
            str(args.time_fraction),
            "--train-fraction",
            str(args.train_fraction),
        ]
        if args.minimize:
            cmd.append("--minimize")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, stderr=subprocess.DEVNULL
        )

    def ask(self, case: int, minimize: bool, wait: float) -> dict | None:
        """The worker's answer, or None if it died or did not answer in `wait` seconds (it is killed)."""
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps({"case": case, "minimize": minimize}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.kill()
            return None
        return json.loads(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def slug(signature: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", signature).strip("-")[:100]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--start", type=int, default=0, help="The first case number.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"))
    parser.add_argument("--timeout", type=float, default=10.0, help="Seconds per command.")
    parser.add_argument("--memory-mb", type=int, default=3072, help="Address space a worker may add.")
    parser.add_argument(
        "--time-fraction",
        type=float,
        default=0.25,
        help="The share of small accepted nets also run through `netspec time`.",
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.0,
        help="The share of accepted specs with a solver section also trained for one iteration.",
    )
    parser.add_argument("--minimize", action="store_true", help="Shrink the first spec of each defect.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.seed, args.timeout, args.memory_mb, args.time_fraction, args.train_fraction, args.minimize)
        return

    sys.path.insert(0, str(ROOT))
    from tests.fuzz_specs import Generator

    args.out.mkdir(parents=True, exist_ok=True)
    found: dict[str, dict] = {}
    accepted = timed = trained = 0
    started = time.monotonic()
    w = Worker(args)
    # A case runs up to six commands; a worker answers within that, or it is stuck where its alarm cannot
    # reach (inside C code).
    wait = args.timeout * 14 + 60
    for i in range(args.start, args.start + args.cases):
        answer = w.ask(i, False, wait)
        if answer is None:
            case = Generator(args.seed).case(i)
            code = w.proc.returncode
            sig = "Hang (worker killed)" if code == -9 else f"Worker died (exit status {code})"
            answer = {
                "case": i,
                "accepted": False,
                "timed": False,
                "trained": False,
                "spec": case.text,
                "name": case.name,
                "how": case.how,
                "defects": [{"signature": sig, "where": "?", "command": "netspec check", "detail": ""}],
            }
            w = Worker(args)
        accepted += answer["accepted"]
        timed += answer["timed"]
        trained += answer.get("trained", False)
        for d in answer["defects"]:
            entry = found.setdefault(
                d["signature"],
                {
                    "count": 0,
                    "cases": [],
                    **d,
                    "spec": answer["spec"],
                    "name": answer["name"],
                    "how": answer["how"],
                    "case": i,
                },
            )
            entry["count"] += 1
            entry["cases"].append(i)
            if len(answer["spec"]) < len(entry["spec"]):
                entry.update(d, spec=answer["spec"], name=answer["name"], how=answer["how"], case=i)
        done = i - args.start + 1
        if done % 500 == 0:
            print(
                f"{done} cases, {accepted} accepted, {len(found)} defects, {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    if args.minimize:
        for sig, entry in found.items():
            if sig.startswith(("Hang", "Worker")):
                continue
            answer = w.ask(entry["case"], True, wait * 20) or {"defects": []}
            small = [d["minimal"] for d in answer["defects"] if d["signature"] == sig and "minimal" in d]
            if small:
                entry["minimal"] = small[0]
            else:
                w = Worker(args)
    w.kill()
    write(args.out, found, args.cases, accepted, timed, trained, time.monotonic() - started)
    print(
        f"{args.cases} cases ({accepted} accepted, {timed} timed, {trained} trained) in "
        f"{time.monotonic() - started:.0f} s: {len(found)} distinct defects; see {args.out / 'summary.md'}"
    )


def write(
    out: Path, found: dict[str, dict], cases: int, accepted: int, timed: int, trained: int, seconds: float
) -> None:
    from tests.fuzz_specs import Case

    rows = ["| defect | where | cases | first | command |", "| --- | --- | --- | --- | --- |"]
    for sig, e in sorted(found.items(), key=lambda kv: -kv[1]["count"]):
        folder = out / slug(sig)
        folder.mkdir(exist_ok=True)
        suffix = Path(e["name"]).suffix
        (folder / f"spec{suffix}").write_bytes(Case(e["name"], e["spec"], "").data())
        if "minimal" in e:
            (folder / f"minimal{suffix}").write_bytes(Case(e["name"], e["minimal"], "").data())
        (folder / "traceback.txt").write_text(
            f"{e['command']}\n{e['how']}\n\n{e['detail']}", encoding="utf-8", errors="backslashreplace"
        )
        (folder / "cases.txt").write_text(" ".join(map(str, e["cases"])) + "\n")
        rows.append(f"| {sig} | {e['where']} | {e['count']} | {e['cases'][0]} | {e['command']} |")
    (out / "summary.md").write_text(
        f"{cases} cases, {accepted} accepted, {timed} timed, {trained} trained, {seconds:.0f} s, "
        f"{len(found)} distinct defects\n\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    main()
