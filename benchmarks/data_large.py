"""Large files: `tunelab data dedup` and `tunelab data report` on a JSONL bigger than a memory cap.

The corpus: prompt/completion rows cut from the real datasets in ../shared/data (DialogSum dialogues and
summaries, CodeAlpaca and alpaca-style tasks, XQuAD contexts/questions/answers in English, Chinese and
Russian, ShareGPT-zh and DPO conversations, emotion / SST-2 texts and labels, continuations of
wikitext-2, PTB and Shakespeare), drawn in proportion to their length and repeated with perturbations until
the file reaches --size-mb: each row swaps ~15% of the words of its completion (characters for Chinese)
and sometimes one word of its prompt; 3% of rows are exact copies of a recent row (case/punctuation
changed) and 5% near copies (one word changed). The file is written to a temporary folder, never into the
repository.

What runs, each `tunelab` command in its own subprocess, watched every 0.1 s through /proc/PID/status and
killed when its resident memory passes --cap-mb (the peak is the kernel's ru_maxrss from wait4):

1. the large file: `tunelab data dedup` and `tunelab data report` streaming (this checkout), and the same
   two commands on the in-memory code they replace (the baseline, run from `git archive` of the commits
   before streaming, under the same cap);
2. --report-rows (default 100,000) rows of the same corpus: `tunelab data report` and `tunelab data dedup`,
   streaming vs baseline, side by side (wall and CPU time, peak RSS, ratios), and whether their outputs
   are identical (data.jsonl / rejects.jsonl bytes; the report JSON); the report also in one process
   (TUNELAB_DATA_WORKERS=0: no worker processes for language ID and PII), against the default.

    python benchmarks/data_large.py                           # 1 GB file, 800 MB cap, 100k-row comparison
    python benchmarks/data_large.py --size-mb 300 --cap-mb 500 --skip-large-report
    python benchmarks/data_large.py --keep /tmp/large         # keep the generated files and outputs

The machine this was developed on has 2 shared cores: compare wall times only within one run, and prefer
the CPU times (user + system of the subprocess) when other work runs beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
# The in-memory implementations the streaming ones replace (the parents of the commits that made them stream).
BASELINE_DEDUP_REV = "a1dc74a^"  # `tunelab data <verb>`: read all rows, curate the list
BASELINE_REPORT_REV = "923b5b3"  # `tunelab data report`: audit_examples over a list (same report sections)
EXACT_COPIES, NEAR_COPIES = 0.03, 0.05


# ----------------------------------------------------------------------------------------------- the corpus


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding=encoding).splitlines() if ln.strip()]


def _conversation_pairs(rows: list[dict]) -> list[tuple[str, str]]:
    pairs = []
    for row in rows:
        turns = [t["value"] for t in row.get("conversations", [])]
        chosen = row.get("chosen")
        if chosen is not None:
            turns.append(chosen["value"] if isinstance(chosen, dict) else chosen)
        pairs += [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2)]
    return pairs


def _task_pairs() -> list[tuple[str, str]]:
    pairs = []
    for row in _jsonl(DATA / "dialogsum" / "dialogsum.dev.jsonl") + _jsonl(DATA / "dialogsum" / "dialogsum.test.jsonl"):
        pairs += [("Summarize the dialogue:\n" + row["dialogue"], v) for k, v in row.items() if k.startswith("summary")]
    alpaca = json.loads((DATA / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    alpaca += json.loads((DATA / "llamafactory_alpaca_zh_demo" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    pairs += [(r["instruction"] + ("\n" + r["input"] if r["input"] else ""), r["output"]) for r in alpaca]
    for name in ("alpaca_seed_tasks/seed_tasks.jsonl", "self_instruct_user_oriented/user_oriented_instructions.jsonl",
                 "ru_alpaca_seed_tasks/ru_alpaca_seed_tasks.jsonl"):
        for row in _jsonl(DATA / name):
            pairs += [(row["instruction"] + ("\n" + i["input"] if i.get("input") else ""), i.get("output", ""))
                      for i in row.get("instances", [])]
    for lang in ("en", "zh", "ru"):
        squad = json.loads((DATA / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))
        for para in (p for art in squad["data"] for p in art["paragraphs"]):
            pairs += [(para["context"] + "\n\nQ: " + qa["question"], qa["answers"][0]["text"]) for qa in para["qas"]]
    pairs += _conversation_pairs(_jsonl(DATA / "sharegpt_zh_1k" / "sharegpt_zh_1K_format.jsonl"))
    pairs += _conversation_pairs(_jsonl(DATA / "dpo_zh_500" / "dpo_zh_500.jsonl"))
    pairs += _conversation_pairs(json.loads((DATA / "llamafactory_dpo_en_demo" / "dpo_en_demo.json")
                                            .read_text(encoding="utf-8")))
    return pairs


def _text_pairs() -> list[tuple[str, str]]:
    pairs = []
    for name in ("train.txt", "val.txt", "test.txt"):
        pairs += [("Which emotion does this text express?\n" + text, label) for text, label in
                  (ln.rsplit(";", 1) for ln in _lines(DATA / "emotion" / name)[1:])]
    for name in ("stsa.binary.train", "stsa.binary.dev"):
        pairs += [("Is this review positive (1) or negative (0)?\n" + ln[2:], ln[0])
                  for ln in _lines(DATA / "sst2_stsa_binary" / name)]
    lines = _lines(DATA / "wikitext2_raw" / "wiki.test.raw") + _lines(DATA / "ptb" / "ptb.test.txt")
    lines += _lines(DATA / "tinyshakespeare" / "input.txt")
    for i in range(0, len(lines) - 4, 4):
        pairs.append(("Continue the text:\n" + "\n".join(lines[i:i + 2]), "\n".join(lines[i + 2:i + 4])))
    return pairs


def base_pairs() -> list[tuple[str, str]]:
    """Real (prompt, completion) pairs from ../shared/data (about 60k)."""
    return [(p, c) for p, c in _task_pairs() + _text_pairs() if p.strip() and c.strip()]


def _swap(text: str, fraction: float, pool: list[str], rng: random.Random) -> str:
    words = text.split(" ")
    if len(words) * 8 < len(text):  # written without spaces: swap characters
        chars = list(text)
        for _ in range(max(1, round(fraction * len(chars)))):
            chars[rng.randrange(len(chars))] = rng.choice(pool)[0]
        return "".join(chars)
    for _ in range(max(1, round(fraction * len(words)))):
        words[rng.randrange(len(words))] = rng.choice(pool)
    return " ".join(words)


def write_corpus(path: Path, size_mb: float, pairs: list[tuple[str, str]], seed: int = 0) -> int:
    """Write rows until the file holds ``size_mb`` megabytes; returns the number of rows."""
    rng = random.Random(seed)
    pool = [w for p, c in pairs[::7] for w in c.split() if w.isalpha()][:200_000]
    # Pairs are drawn in proportion to their length (~1 KB rows, like chat SFT data; uniform draws would
    # give mostly one-line classification texts).
    cum = list(itertools.accumulate(len(p) + len(c) for p, c in pairs))
    recent: deque[dict] = deque(maxlen=2000)
    target, size, rows = size_mb * 1e6, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            u = rng.random()
            if u < EXACT_COPIES and recent:
                src = rng.choice(recent)
                row = {"prompt": src["prompt"], "completion": src["completion"].upper() + "!"}
            elif u < EXACT_COPIES + NEAR_COPIES and recent:
                src = rng.choice(recent)
                row = {"prompt": src["prompt"], "completion": _swap(src["completion"], 0.0, pool, rng)}
            else:
                prompt, completion = rng.choices(pairs, cum_weights=cum)[0]
                if rng.random() < 0.5:
                    prompt = _swap(prompt, 0.0, pool, rng)
                row = {"prompt": prompt, "completion": _swap(completion, 0.15, pool, rng)}
                recent.append(row)
            line = json.dumps(row, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            rows += 1
    return rows


def head(src: Path, dst: Path, rows: int) -> None:
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i >= rows:
                break
            out.write(line)


# --------------------------------------------------------------------------------------------- measurement


@dataclass
class Run:
    label: str
    rc: int
    wall_s: float
    cpu_s: float
    peak_mb: float
    killed: bool


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_capped(label: str, cmd: list[str], cap_mb: float, env: dict[str, str], log: Path) -> Run:
    """Run ``cmd``; kill it if its RSS passes ``cap_mb``; wall time, CPU time and peak RSS from wait4."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        killed, done = threading.Event(), threading.Event()

        def watch() -> None:
            # Not proc.poll(): it would reap the child before wait4 can read its resource usage.
            while not done.wait(0.1):
                if _rss_mb(proc.pid) > cap_mb:
                    killed.set()
                    os.kill(proc.pid, signal.SIGKILL)
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)  # the only wait: it returns the child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        watcher.join()
    return Run(label, proc.returncode, time.perf_counter() - t0, usage.ru_utime + usage.ru_stime,
               usage.ru_maxrss / 1024, killed.is_set())


def baseline_src(rev: str, into: Path) -> Path | None:
    """``src/`` of a commit (git archive), or None outside a git checkout."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"baseline {rev} not available ({e}); only the streaming runs are measured", file=sys.stderr)
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def _cmd(verb: str, src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli.main", "data", verb, str(src), "-o", str(out)]


def _env(src_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(src_dir if src_dir else ROOT / "src")
    return env


def _same_files(a: Path, b: Path, names: tuple[str, ...]) -> str:
    if not all((a / n).is_file() and (b / n).is_file() for n in names):
        return "n/a"
    return "identical" if all((a / n).read_bytes() == (b / n).read_bytes() for n in names) else "DIFFERENT"


def _same_report(a: Path, b: Path) -> str:
    fa, fb = a / "data_report.json", b / "data_report.json"
    if not (fa.is_file() and fb.is_file()):
        return "n/a"
    ja, jb = (json.loads(f.read_text(encoding="utf-8")) for f in (fa, fb))
    return "identical" if ja == jb else "DIFFERENT: " + ", ".join(k for k in ja if ja.get(k) != jb.get(k))


def _row(r: Run, rows: int, file_mb: float) -> str:
    state = "killed at cap" if r.killed else ("ok" if r.rc == 0 else f"exit {r.rc}")
    rate = f"{rows / r.wall_s:,.0f}" if r.rc == 0 else "-"
    return (f"{r.label:<34}{state:>14}{rate:>10}{r.wall_s:>9.1f}{r.cpu_s:>9.1f}{r.peak_mb:>10.0f}"
            f"{r.peak_mb / file_mb:>10.2f}")


def _table(title: str, runs: list[Run], rows: int, file_mb: float) -> None:
    print(f"\n{title}")
    print(f"{'':<34}{'outcome':>14}{'rows/s':>10}{'wall s':>9}{'cpu s':>9}{'peak MB':>10}{'RSS/file':>10}")
    for r in runs:
        print(_row(r, rows, file_mb))


def _ratio(name: str, new: Run, base: Run | None) -> None:
    if base is None or base.rc != 0 or new.rc != 0:
        return
    print(f"  {name}: wall {base.wall_s / new.wall_s:.2f}x, cpu {base.cpu_s / new.cpu_s:.2f}x, "
          f"peak RSS {base.peak_mb / new.peak_mb:.2f}x less (baseline / new)")


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=1000, help="size of the large JSONL (MB)")
    ap.add_argument("--cap-mb", type=float, default=800, help="resident-memory cap for every subprocess (MB)")
    ap.add_argument("--report-rows", type=int, default=100_000, help="rows of the side-by-side comparison")
    ap.add_argument("--skip-large-report", action="store_true", help="only dedup on the large file")
    ap.add_argument("--skip-baseline", action="store_true", help="do not run the in-memory baselines")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"shared datasets not found at {DATA}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="tunelab-data-large-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        _bench(args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path) -> None:
    big, small = work / "large.jsonl", work / "rows.jsonl"
    t0 = time.perf_counter()
    pairs = base_pairs()
    n_big = write_corpus(big, args.size_mb, pairs)
    head(big, small, args.report_rows)
    big_mb, small_mb = big.stat().st_size / 1e6, small.stat().st_size / 1e6
    print(f"corpus: {len(pairs):,} real pairs from {DATA}; large file {big_mb:,.0f} MB, {n_big:,} rows "
          f"({big_mb * 1e6 / n_big:,.0f} bytes a row), written in {time.perf_counter() - t0:.0f} s")
    print(f"memory cap for every run: {args.cap_mb:,.0f} MB resident ({args.cap_mb / big_mb:.2f} of the large file)")
    base = {} if args.skip_baseline else {
        "dedup": baseline_src(BASELINE_DEDUP_REV, work / "base-dedup"),
        "report": baseline_src(BASELINE_REPORT_REV, work / "base-report")}

    def run(label: str, verb: str, src: Path, out: str, code: Path | None, **env: str) -> Run:
        return run_capped(label, _cmd(verb, src, work / out), args.cap_mb, {**_env(code), **env},
                          work / f"{out}.log")

    large = [run("dedup, streaming", "dedup", big, "dedup-new", None)]
    if base.get("dedup"):
        large.append(run(f"dedup, in-memory ({BASELINE_DEDUP_REV})", "dedup", big, "dedup-base", base["dedup"]))
    if not args.skip_large_report:
        large.append(run("report, streaming", "report", big, "report-new", None))
        if base.get("report"):
            large.append(run(f"report, in-memory ({BASELINE_REPORT_REV})", "report", big, "report-base",
                             base["report"]))
    _table(f"large file: {big_mb:,.0f} MB, {n_big:,} rows, cap {args.cap_mb:,.0f} MB", large, n_big, big_mb)

    side = [run("report, streaming", "report", small, "small-report-new", None),
            run("report, streaming, 1 process", "report", small, "small-report-serial", None,
                TUNELAB_DATA_WORKERS="0")]
    if base.get("report"):
        side.append(run(f"report, in-memory ({BASELINE_REPORT_REV})", "report", small, "small-report-base",
                        base["report"]))
    side.append(run("dedup, streaming", "dedup", small, "small-dedup-new", None))
    if base.get("dedup"):
        side.append(run(f"dedup, in-memory ({BASELINE_DEDUP_REV})", "dedup", small, "small-dedup-base",
                        base["dedup"]))
    _table(f"{args.report_rows:,} rows ({small_mb:,.1f} MB), side by side", side, args.report_rows, small_mb)
    by = {r.label.split(" (")[0]: r for r in side}
    _ratio("report", by["report, streaming"], by.get("report, in-memory"))
    _ratio("report, worker processes", by["report, streaming"], by["report, streaming, 1 process"])
    print(f"  report JSON with and without worker processes: "
          f"{_same_report(work / 'small-report-new', work / 'small-report-serial')}")
    _ratio("dedup", by["dedup, streaming"], by.get("dedup, in-memory"))
    if base:
        print(f"  outputs: report JSON {_same_report(work / 'small-report-new', work / 'small-report-base')}; "
              f"dedup data.jsonl + rejects.jsonl "
              f"{_same_files(work / 'small-dedup-new', work / 'small-dedup-base', ('data.jsonl', 'rejects.jsonl'))}")
        if not args.skip_large_report:
            print(f"  large file outputs: dedup "
                  f"{_same_files(work / 'dedup-new', work / 'dedup-base', ('data.jsonl', 'rejects.jsonl'))}")


if __name__ == "__main__":
    main()
