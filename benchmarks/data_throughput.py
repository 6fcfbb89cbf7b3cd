"""Near-duplicate detection throughput and quality: tunelab versus a plain datasketch loop, side by side.

The corpus: >= 100,000 documents cut from the real text files in ../shared/data (Shakespeare speeches,
wikitext-2 paragraphs, PTB sentences, emotion / SST-2 / TREC texts, DialogSum dialogues and summaries,
CodeAlpaca and alpaca-style instructions and outputs, XQuAD contexts and questions in English, Chinese and
Russian, ShareGPT-zh and DPO conversation turns), topped up with windows of consecutive lines, plus planted
near-duplicates made with known edits (word deletions / insertions / substitutions, character edits for
Chinese, case, punctuation and whitespace changes). The TRUE Jaccard of every planted pair is computed on
the same shingles tunelab uses (`tunelab.data.dedup.shingles`).

Contenders, in one process, on the same texts and the same shingles:
  1. tunelab: `near_duplicate_clusters(texts)` end to end (128 permutations, 16 bands x 8 rows, confirm at
     estimated Jaccard >= 0.8).
  2. baseline: per document `datasketch.MinHash(num_perm=128)` + `update(shingle)` for each shingle, then
     `datasketch.MinHashLSH(threshold=0.8, num_perm=128)` insert and query (its reported pairs are its
     candidates; clusters by union-find). It stops after a time budget (~3 min); its documents/s are then
     measured on that prefix of the corpus, and tunelab is timed again on the same prefix for the ratio.

Quality: recall = planted pairs with true Jaccard >= 0.85 that land in one reported cluster; precision = the
reported pairs (every pair inside a reported cluster, sampled when there are many) whose true Jaccard is at
least threshold - 0.05; also for the pairs a dedup would act on (each dropped member and its kept row).

    python benchmarks/data_throughput.py              # 110,000 documents (~2-4 min on 2 cores)
    python benchmarks/data_throughput.py --quick      # 20,000 documents, 20 s baseline budget
    python benchmarks/data_throughput.py --docs 200000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PLANT_FRACTION = 0.05  # planted copies, as a fraction of all documents
RECALL_MIN_J = 0.85
PRECISION_SAMPLE = 20_000


# ----------------------------------------------------------------------------------------------- the corpus


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding=encoding).splitlines() if ln.strip()]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _turns(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        for turn in row.get("conversations", []):
            out.append(turn["value"])
        for key in ("chosen", "rejected"):
            val = row.get(key)
            out.append(val["value"] if isinstance(val, dict) else val or "")
    return out


def _plain_sources() -> list[str]:
    shakespeare = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n")
    docs = [p.strip() for p in shakespeare]
    docs += _lines(DATA / "wikitext2_raw" / "wiki.test.raw")  # CRLF: splitlines handles it
    for name in ("ptb.test.txt", "ptb.valid.txt"):
        docs += _lines(DATA / "ptb" / name)
    for name in ("train.txt", "val.txt", "test.txt"):
        docs += [ln.rsplit(";", 1)[0] for ln in _lines(DATA / "emotion" / name)[1:]]
    for name in ("stsa.binary.train", "stsa.binary.dev", "stsa.binary.test"):
        docs += [ln.split(" ", 1)[1] for ln in _lines(DATA / "sst2_stsa_binary" / name)]
    for name in ("TREC.train.all", "TREC.test.all"):
        docs += [ln.split(" ", 1)[1] for ln in _lines(DATA / "trec" / name, "latin-1")]
    return docs


def _structured_sources() -> list[str]:
    docs = []
    for row in _jsonl(DATA / "dialogsum" / "dialogsum.dev.jsonl") + _jsonl(DATA / "dialogsum" / "dialogsum.test.jsonl"):
        docs += [v for k, v in row.items() if k == "dialogue" or k.startswith("summary")]
    alpaca = json.loads((DATA / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    alpaca += json.loads((DATA / "llamafactory_alpaca_zh_demo" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    docs += [row[k] for row in alpaca for k in ("instruction", "input", "output") if row[k]]
    for name in ("alpaca_seed_tasks/seed_tasks.jsonl", "self_instruct_user_oriented/user_oriented_instructions.jsonl",
                 "ru_alpaca_seed_tasks/ru_alpaca_seed_tasks.jsonl"):
        for row in _jsonl(DATA / name):
            docs.append(row["instruction"])
            docs += [inst.get(k, "") for inst in row.get("instances", []) for k in ("input", "output")]
    for lang in ("en", "zh", "ru"):
        squad = json.loads((DATA / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))
        for para in (p for art in squad["data"] for p in art["paragraphs"]):
            docs += [para["context"]] + [qa["question"] for qa in para["qas"]]
    docs += _turns(_jsonl(DATA / "sharegpt_zh_1k" / "sharegpt_zh_1K_format.jsonl"))
    docs += _turns(_jsonl(DATA / "dpo_zh_500" / "dpo_zh_500.jsonl"))
    docs += _turns(json.loads((DATA / "llamafactory_dpo_en_demo" / "dpo_en_demo.json").read_text(encoding="utf-8")))
    return docs


def _windows(n: int) -> list[str]:
    """Extra documents: non-overlapping windows of 2-6 consecutive lines of the long-form texts."""
    lines = _lines(DATA / "tinyshakespeare" / "input.txt") + _lines(DATA / "wikitext2_raw" / "wiki.test.raw")
    lines += _lines(DATA / "ptb" / "ptb.test.txt") + _lines(DATA / "ptb" / "ptb.valid.txt")
    out: list[str] = []
    for width in range(2, 7):
        out += ["\n".join(lines[i:i + width]) for i in range(0, len(lines) - width + 1, width)]
        if len(out) >= n:
            break
    return out[:n]


def real_documents(n: int) -> list[str]:
    docs = [d for d in _plain_sources() + _structured_sources() if d and d.strip()]
    if len(docs) < n:
        docs += _windows(n - len(docs))
    return docs[:n]


# ---------------------------------------------------------------------------------------- planted duplicates


def _edit_words(words: list[str], n_edits: int, pool: list[str], rng: random.Random) -> list[str]:
    words = words[:]
    for _ in range(n_edits):
        op, pos = rng.choice(("delete", "insert", "substitute")), rng.randrange(len(words))
        if op == "delete" and len(words) > 2:
            del words[pos]
        elif op == "insert":
            words.insert(pos, rng.choice(pool))
        else:
            words[pos] = rng.choice(pool)
    return words


def _surface(words: list[str], rng: random.Random) -> str:
    """Case, punctuation and whitespace changes: invisible after normalisation."""
    kind = rng.random()
    if kind < 0.2:
        words = [w.upper() if rng.random() < 0.2 else w for w in words]
    elif kind < 0.4:
        words = [w.capitalize() if rng.random() < 0.3 else w.lower() for w in words]
    if rng.random() < 0.5:
        words = [w + rng.choice(",;!") if rng.random() < 0.1 else w.strip(".,;:!?") for w in words]
    sep = "  " if rng.random() < 0.3 else " "
    return sep.join(words)


def make_copy(text: str, pool: list[str], rng: random.Random) -> str:
    """A near-duplicate of ``text``: a few word (or character) edits, then surface changes."""
    words = text.split()
    unspaced = len(words) * 10 < len(text)
    units = list(text.replace(" ", "")) if unspaced else words
    # A quarter of copies only change case/punctuation/spacing; the rest get up to ~8% of units edited, which
    # spreads the true Jaccard from 1.0 down to ~0.4 (on 5-gram shingles) and exercises the 0.8 boundary.
    n_edits = 0 if rng.random() < 0.25 else rng.randint(1, max(1, round(0.08 * len(units))))
    if unspaced:
        return "".join(_edit_words(units, n_edits, list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年"), rng))
    return _surface(_edit_words(units, n_edits, pool, rng), rng)


def plant(docs: list[str], n_copies: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """Append near-duplicate copies; a tenth of the bases get two. Returns texts and (base, copy) pairs."""
    rng = random.Random(seed)
    pool = [w for d in docs[:5000] for w in d.split()][:50_000]
    long_docs = [i for i, d in enumerate(docs) if len(d.split()) >= 60 or len(d) >= 150]
    any_docs = [i for i, d in enumerate(docs) if len(d.split()) >= 8 or len(d) >= 30]
    texts, pairs = docs[:], []
    while len(texts) - len(docs) < n_copies:
        base = rng.choice(long_docs if rng.random() < 0.6 else any_docs)
        for _ in range(2 if rng.random() < 0.1 else 1):
            pairs.append((base, len(texts)))
            texts.append(make_copy(docs[base], pool, rng))
    return texts, pairs


def shuffled(texts: list[str], pairs: list[tuple[int, int]], seed: int = 1):
    """Shuffle so planted copies are spread through the corpus (and through any prefix the baseline gets)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    return [texts[i] for i in order], [(where[a], where[b]) for a, b in pairs]


# ------------------------------------------------------------------------------------------------ contenders


def run_tunelab(texts: list[str], params) -> tuple[list[list[int]], float]:
    from tunelab.data.dedup import near_duplicate_clusters

    t = time.perf_counter()
    clusters = near_duplicate_clusters(texts, params)
    return clusters, time.perf_counter() - t


def run_baseline(texts: list[str], params, budget_s: float) -> tuple[list[list[int]], float, int]:
    """datasketch as most tutorials use it; stops adding documents once ``budget_s`` has passed."""
    from datasketch import MinHash, MinHashLSH

    from tunelab.data.dedup import _clusters, shingles

    t = time.perf_counter()
    lsh, sigs = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm), []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=params.num_perm, seed=params.seed)
        for sh in shingles(text, params):
            m.update(sh.encode("utf-8"))
        lsh.insert(i, m)
        sigs.append(m)
        if i % 500 == 499 and time.perf_counter() - t > budget_s:
            break
    pairs = [(i, j) for i, m in enumerate(sigs) for j in lsh.query(m) if j > i]
    return _clusters(len(sigs), pairs), time.perf_counter() - t, len(sigs)


# --------------------------------------------------------------------------------------------------- quality


def recall(clusters: list[list[int]], pairs: list[tuple[int, int, float]], lo: float, hi: float) -> tuple[float, int]:
    """Fraction of planted pairs with true Jaccard in [lo, hi) whose two documents share a reported cluster."""
    cluster_of = {i: c for c, members in enumerate(clusters) for i in members}
    wanted = [(a, b) for a, b, j in pairs if lo <= j < hi]
    found = sum(a in cluster_of and cluster_of.get(a) == cluster_of.get(b) for a, b in wanted)
    return found / max(len(wanted), 1), len(wanted)


def cluster_pairs(clusters: list[list[int]], rng: random.Random) -> tuple[list[tuple[int, int]], int]:
    """Every pair inside the clusters, or a uniform sample of PRECISION_SAMPLE of them."""
    sizes = [len(c) * (len(c) - 1) // 2 for c in clusters]
    total = sum(sizes)
    if total <= PRECISION_SAMPLE:
        return [(a, b) for c in clusters for k, a in enumerate(c) for b in c[k + 1:]], total
    picks = rng.choices(clusters, weights=sizes, k=PRECISION_SAMPLE)
    return [tuple(rng.sample(c, 2)) for c in picks], total


def precision(pairs: list[tuple[int, int]], texts: list[str], params) -> float:
    from tunelab.data.dedup import jaccard

    ok = sum(jaccard(texts[a], texts[b], params) >= params.threshold - 0.05 for a, b in pairs)
    return ok / max(len(pairs), 1)


def representative_pairs(clusters: list[list[int]], texts: list[str]) -> list[tuple[int, int]]:
    from tunelab.data.dedup import choose_representative

    out = []
    for c in clusters:
        keep = choose_representative(c, texts)
        out += [(i, keep) for i in c if i != keep]
    return out


def quality(name: str, clusters, texts, planted, params, rng) -> dict:
    rec, n_wanted = recall(clusters, planted, RECALL_MIN_J, 2.0)
    bins = {f"[{lo}, {hi if hi <= 1 else 1.0}{')' if hi <= 1 else ']'}": recall(clusters, planted, lo, hi)
            for lo, hi in ((0.5, 0.75), (0.75, 0.85), (0.85, 1.0), (1.0, 2.0))}
    pairs, total = cluster_pairs(clusters, rng)
    reps = representative_pairs(clusters, texts)
    rep_sample = reps if len(reps) <= PRECISION_SAMPLE else rng.sample(reps, PRECISION_SAMPLE)
    return {"name": name, "recall": rec, "n_wanted": n_wanted, "bins": bins, "pairs": total, "pairs_checked": len(pairs),
            "precision": precision(pairs, texts, params), "rep_precision": precision(rep_sample, texts, params),
            "rep_checked": len(rep_sample), "clusters": len(clusters), "in_clusters": sum(map(len, clusters))}


# ------------------------------------------------------------------------------------------------------ main


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _print_quality(q: dict) -> None:
    print(f"  {q['name']}: {q['clusters']:,} clusters holding {q['in_clusters']:,} docs, {q['pairs']:,} pairs")
    print(f"    recall (planted pairs, true J >= {RECALL_MIN_J}, n={q['n_wanted']:,}): {q['recall']:.4f}")
    print("      found, by true J: " + ", ".join(f"{k} {r:.3f} (n={n:,})" for k, (r, n) in q["bins"].items()))
    print(f"    precision, all pairs in clusters (n={q['pairs_checked']:,} checked): {q['precision']:.4f}")
    print(f"    precision, dropped row vs kept row (n={q['rep_checked']:,} checked): {q['rep_precision']:.4f}")


def _planted_summary(planted: list[tuple[int, int, float]]) -> None:
    js = [j for _, _, j in planted]
    bins = [(0, 0.5), (0.5, 0.75), (0.75, 0.85), (0.85, 1.0), (1.0, 1.01)]
    counts = ", ".join(f"[{lo:.2f},{min(hi, 1):.2f}{']' if hi > 1 else ')'}: {sum(lo <= j < hi for j in js):,}"
                       for lo, hi in bins)
    print(f"planted pairs: {len(planted):,}; true Jaccard {counts}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=110_000, help="total documents, planted copies included")
    ap.add_argument("--quick", action="store_true", help="20,000 documents and a 20 s baseline budget")
    ap.add_argument("--baseline-budget", type=float, default=180.0, help="seconds for the datasketch loop")
    args = ap.parse_args()
    n, budget = (20_000, 20.0) if args.quick else (args.docs, args.baseline_budget)
    if not DATA.is_dir():
        print(f"skipped: shared datasets not found at {DATA} (see DESIGN.md section 4)")
        sys.exit(0)

    from tunelab.data.dedup import MinHashParams, jaccard

    params = MinHashParams()
    n_copies = int(n * PLANT_FRACTION)
    t = time.perf_counter()
    texts, pairs = shuffled(*plant(real_documents(n - n_copies), n_copies))
    planted = [(a, b, jaccard(texts[a], texts[b], params)) for a, b in pairs]
    print(f"corpus: {len(texts):,} documents ({len(texts) - n_copies:,} real, {n_copies:,} planted copies), "
          f"{sum(map(len, texts)) / 1e6:.1f} M chars, built in {time.perf_counter() - t:.1f} s; "
          f"peak RSS {_rss_mb():,.0f} MB")
    _planted_summary(planted)
    print(f"params: shingle={params.shingle}, num_perm={params.num_perm}, bands={params.bands} x rows={params.rows}, "
          f"threshold={params.threshold}; caught with p=0.5 at J={params.similarity_at(0.5):.3f}, "
          f"p=0.95 at J={params.similarity_at(0.95):.3f}")

    rng = random.Random(2)
    clusters, t_tl = run_tunelab(texts, params)
    rss_tl = _rss_mb()
    print(f"\n(1) tunelab near_duplicate_clusters: {len(texts):,} docs in {t_tl:.2f} s = "
          f"{len(texts) / t_tl:,.0f} docs/s; process peak RSS so far {rss_tl:,.0f} MB")
    q_tl = quality("tunelab", clusters, texts, planted, params, rng)
    _print_quality(q_tl)

    b_clusters, t_b, n_b = run_baseline(texts, params, budget)
    subset = n_b < len(texts)
    label = f"first {n_b:,} docs (time budget {budget:.0f} s; docs/s extrapolated from this prefix)" if subset \
        else f"all {n_b:,} docs"
    print(f"\n(2) datasketch MinHash loop + MinHashLSH, {label}: {t_b:.2f} s = {n_b / t_b:,.0f} docs/s; "
          f"process peak RSS {_rss_mb():,.0f} MB")
    sub_planted = [p for p in planted if p[0] < n_b and p[1] < n_b]
    _print_quality(quality("datasketch", b_clusters, texts[:n_b], sub_planted, params, rng))
    t_same = t_tl
    if subset:
        _, t_same = run_tunelab(texts[:n_b], params)
        print(f"  tunelab on the same {n_b:,} docs: {t_same:.2f} s = {n_b / t_same:,.0f} docs/s")
    print(f"\nspeed-up, tunelab vs datasketch on the same {n_b:,} docs: {t_b / t_same:.1f}x")


if __name__ == "__main__":
    main()
