"""A broad English distillation corpus from text already on the machine, disjoint from the evaluation sentences.

Why: a 3-layer student of all-MiniLM-L6-v2 distilled on stdlib docstrings, template sentences and random vocabulary
words fitted its training batches (cosine ≈ 0.97) far better than the built-in evaluation sentences (0.89; BENCHMARKS
session 7): the text was too narrow. Here every source is English that other people wrote for other purposes:

- ``wordnet_examples`` / ``wordnet_glosses``: the usage examples ("the dog barked all night") and definitions of
  WordNet 3.0 (Debian ``wordnet-base``, ``/usr/share/wordnet``): everyday English over the whole vocabulary;
- ``fortunes``: Debian's fortune cookies (``fortunes``): quotations, jokes, proverbs;
- ``debian``: the long descriptions of the installed Debian packages (``/var/lib/dpkg/status``);
- ``docs``: README files under ``/usr/share/doc`` (licence and changelog files skipped);
- ``man``: manual pages (roff stripped to their running text);
- ``python``: docstrings and string literals of every ``.py`` file of this interpreter's site-packages and standard
  library (torch, transformers, numpy, scipy, scikit-learn, optuna, ...);
- ``package_docs``: the long descriptions in the installed packages' METADATA, scikit-learn's dataset
  descriptions (``descr/*.rst``) and package READMEs.

Each source is cut into sentences, cleaned (code, markup, URLs and licence boilerplate dropped), de-duplicated across
sources, and every text that contains an evaluation sentence or shares six consecutive words with one is removed.
Passages (4–7 consecutive sentences of one document, ~100 tokens) serve sequence 128. A missing source is skipped
and reported. The result is deterministic for a seed and the files found, and cached as JSON (``cache_dir``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import re
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepslim._io import atomic_path
from deepslim.config import Config
from deepslim.data.sentences import passage_set, sentences
from deepslim.errors import ConfigError

log = logging.getLogger(__name__)

SOURCES = ("wordnet_examples", "wordnet_glosses", "fortunes", "debian", "docs", "man", "python", "package_docs")
SHINGLE = 6  # words: a text sharing this many consecutive words with an evaluation sentence is dropped
_MAX_FILE = 2_000_000  # bytes read of one file at most


@dataclass(frozen=True, kw_only=True)
class CorpusConfig(Config):
    """``per_source``: at most this many sentences from one source (sources are read in a seeded file order until
    ``oversample`` × that many distinct sentences are found, then sampled). ``passages``: how many runs of 4–7
    consecutive sentences (one document) to add, drawn over all sources. The paths say where each source lives
    (``python_dirs`` empty: this interpreter's site-packages and standard library)."""

    sources: tuple[str, ...] = SOURCES
    per_source: int = 20_000
    passages: int = 6_000
    oversample: float = 2.0
    min_words: int = 5
    max_words: int = 40
    seed: int = 0
    wordnet_dir: str = "/usr/share/wordnet"
    fortune_dir: str = "/usr/share/games/fortunes"
    dpkg_status: str = "/var/lib/dpkg/status"
    doc_dir: str = "/usr/share/doc"
    man_dirs: tuple[str, ...] = ("/usr/share/man/man1", "/usr/share/man/man5", "/usr/share/man/man7",
                                 "/usr/share/man/man8")  # fmt: skip
    python_dirs: tuple[str, ...] = ()
    cache_dir: str | None = str(Path(tempfile.gettempdir()) / "deepslim-corpus")

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ConfigError(f"unknown corpus source {unknown[0]!r}: choose from {', '.join(SOURCES)}")
        if self.per_source < 1 or self.passages < 0 or not self.oversample >= 1:
            raise ConfigError("per_source must be >= 1, passages >= 0 and oversample >= 1")
        if not 1 <= self.min_words <= self.max_words:
            raise ConfigError(f"need 1 <= min_words <= max_words, got {self.min_words} and {self.max_words}")
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "man_dirs", tuple(self.man_dirs))
        object.__setattr__(self, "python_dirs", tuple(self.python_dirs))


@dataclass
class Corpus:
    """Sentences and passages (each list in a seeded random order) and what each source gave: ``found`` distinct
    clean sentences read, ``kept`` sentences after the cap; ``missing`` sources that gave nothing."""

    sentences: list[str]
    passages: list[str]
    found: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def texts(self) -> list[str]:
        """Sentences, then passages."""
        return self.sentences + self.passages

    def summary(self) -> dict[str, Any]:
        """Sizes and sources, for a benchmark's record (no texts)."""
        words = sum(len(t.split()) for t in self.texts())
        return {"sentences": len(self.sentences), "passages": len(self.passages), "words": words,
                "found": self.found, "kept": self.kept, "missing": self.missing, "config": self.config}  # fmt: skip


# -- cleaning ---------------------------------------------------------------------------------------------------------
_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(]?[A-Z])")
_BAD = re.compile(r">>>|::|\(\)|[=<>{}\[\]_\\/#@|`^~*$%]|https?|www\.|(^|\s)\.\w|\w\.\w|"
                  r"licen[cs]|copyright|warrant|\bGNU\b|redistribut|all rights reserved|\bGPL\b|\bFITNESS\b",
                  re.IGNORECASE)  # fmt: skip
_CAMEL = re.compile(r"\b[a-z]+[A-Z]\w*|\b[A-Z]{2,}[a-z]+[A-Z]")
_OK_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.;:'\"!?-()")


def clean_sentence(text: str, min_words: int = 5, max_words: int = 40) -> str | None:
    """One natural sentence, or None: whitespace collapsed, ``min_words``..``max_words`` words, a capital first
    letter and a final . ! or ?, plain letters and punctuation only (no code, markup, paths, URLs, camelCase or
    licence words)."""
    text = " ".join(text.split()).strip(" \"'")
    words = text.split()
    if not min_words <= len(words) <= max_words or not text[:1].isupper() or text[-1] not in ".!?":
        return None
    if any(c not in _OK_CHARS for c in text) or sum(c.isalpha() for c in text) < 0.75 * len(text):
        return None
    if _BAD.search(text) or _CAMEL.search(text) or text.count("(") != text.count(")"):
        return None
    return text


def split_sentences(paragraph: str) -> list[str]:
    """A paragraph cut after . ! or ? followed by a capitalised word."""
    return [s for s in _SPLIT.split(" ".join(paragraph.split())) if s]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


class EvaluationFilter:
    """True for a text that contains an evaluation sentence or passage (normalised: lower case, letters and digits)
    or shares ``SHINGLE`` consecutive words with one."""

    def __init__(self, texts: Iterable[str] | None = None):
        texts = list(texts) if texts is not None else sentences() + passage_set()[0]
        self.whole = [n for n in (_norm(t) for t in texts) if n]
        self.shingles = {s for n in self.whole for s in _shingles(n)}

    def __call__(self, text: str) -> bool:
        n = _norm(text)
        return any(s in self.shingles for s in _shingles(n)) or any(w in n for w in self.whole)


def _shingles(normalized: str) -> Iterator[str]:
    words = normalized.split()
    for i in range(len(words) - SHINGLE + 1):
        yield " ".join(words[i : i + SHINGLE])


# -- sources: each lists its files and reads one file into documents (lists of paragraphs) ----------------------------
def _read(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read(_MAX_FILE)
        else:
            with open(path, "rb") as f:
                raw = f.read(_MAX_FILE)
    except (OSError, EOFError):
        return ""
    return raw.decode("utf-8", errors="replace")


def _blocks(text: str) -> list[str]:
    """Paragraphs: runs of non-blank lines joined."""
    return [" ".join(b.split()) for b in re.split(r"\n\s*\n", text) if b.strip()]


def _wordnet_files(c: CorpusConfig) -> list[Path]:
    return [p for p in (Path(c.wordnet_dir) / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")) if p.is_file()]


def _wordnet(path: Path, examples: bool) -> list[str]:
    """One paragraph per synset: its quoted usage examples, or its definitions, each made a sentence."""
    out = []
    for line in _read(path).splitlines():
        if line.startswith(" ") or "|" not in line:
            continue  # the licence header lines start with two spaces
        parts = [p.strip() for p in line.split("|", 1)[1].split(";")]
        chosen = [p.strip('"') for p in parts if p.startswith('"') == examples and p.strip('"')]
        out.append(" ".join(_sentence_case(p) for p in chosen))
    return out


def _sentence_case(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text[-1:] in ".!?" else ".")


def _fortune_files(c: CorpusConfig) -> list[Path]:
    d = Path(c.fortune_dir)
    return sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix) if d.is_dir() else []


def _fortunes(path: Path) -> list[str]:
    """One paragraph per fortune, attribution lines ("-- Author") dropped."""
    out = []
    for cookie in re.split(r"\n%\n", _read(path)):
        lines = [ln for ln in cookie.splitlines() if not ln.strip().startswith("--")]
        out.append(" ".join(" ".join(lines).split()))
    return out


def _dpkg(path: Path) -> list[str]:
    """The long description of every package, one paragraph per ' .'-separated block."""
    out: list[str] = []
    block: list[str] = []
    in_desc = False
    for line in _read(path).splitlines() + [""]:
        if in_desc and line.startswith(" ") and line.strip() != ".":
            block.append(line.strip())
            continue
        if block:
            out.append(" ".join(block))
            block = []
        in_desc = line.startswith("Description:") or (in_desc and line.startswith(" "))
    return out


def _doc_files(c: CorpusConfig) -> list[Path]:
    d = Path(c.doc_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*/*") if p.is_file() and p.name.lower().startswith("readme")
                  and not p.name.lower().endswith((".html", ".html.gz", ".pdf")))  # fmt: skip


def _man_files(c: CorpusConfig) -> list[Path]:
    return sorted(p for d in c.man_dirs if Path(d).is_dir() for p in Path(d).iterdir() if p.is_file()
                  and not p.is_symlink())  # fmt: skip


_ROFF_TEXT = re.compile(r"^\.(B|I|BR|RB|IR|RI|BI|IB|SM|SB)\s+(.*)$")
_ROFF_ESC = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\\(..|\\\[[^\]]*\]|\\[&|^%:,/]|\\s[-+]?\d+|\\\*(\(..|.)")


def _man(path: Path) -> list[str]:
    """A manual page's running text: macro lines break paragraphs, font macros keep their words, escapes go."""
    paras: list[str] = []
    cur: list[str] = []
    for line in _read(path).splitlines():
        m = _ROFF_TEXT.match(line)
        if m:
            line = m.group(2).replace('"', "")
        elif line.startswith((".", "'")):
            if cur:
                paras.append(" ".join(cur))
            cur = []
            continue
        line = _ROFF_ESC.sub("", line).replace("\\-", "-").replace("\\e", "").replace("\\ ", " ")
        cur.append(line)
    return paras + ([" ".join(cur)] if cur else [])


def _python_dirs(c: CorpusConfig) -> list[Path]:
    dirs = c.python_dirs or (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"])
    return [Path(d) for d in dirs if Path(d).is_dir()]


def _python_files(c: CorpusConfig) -> list[Path]:
    return sorted({p for d in _python_dirs(c) for p in d.rglob("*.py") if p.is_file()})


_TRIPLE = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.DOTALL)


def _python(path: Path) -> list[str]:
    """Paragraphs of the triple-quoted strings of a source file (docstrings, mostly)."""
    return [b for m in _TRIPLE.finditer(_read(path)) for b in _blocks(m.group(1) or m.group(2) or "")]


def _package_doc_files(c: CorpusConfig) -> list[Path]:
    out: set[Path] = set()
    for d in _python_dirs(c):
        out |= {p for p in d.glob("*.dist-info/METADATA") if p.is_file()}
        out |= {p for p in d.glob("*/datasets/descr/*.rst") if p.is_file()}
        out |= {p for p in d.glob("*/README*") if p.is_file() and p.suffix in ("", ".md", ".rst", ".txt")}
    return sorted(out)


def _package_doc(path: Path) -> list[str]:
    text = _read(path)
    if path.name == "METADATA":  # headers, a blank line, then the long description
        text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    return _blocks(text)


Reader = tuple[Callable[[CorpusConfig], list[Path]], Callable[[Path], list[str]]]
READERS: dict[str, Reader] = {
    "wordnet_examples": (_wordnet_files, lambda p: _wordnet(p, True)),
    "wordnet_glosses": (_wordnet_files, lambda p: _wordnet(p, False)),
    "fortunes": (_fortune_files, _fortunes),
    "debian": (lambda c: [Path(c.dpkg_status)] if Path(c.dpkg_status).is_file() else [], _dpkg),
    "docs": (_doc_files, lambda p: _blocks(_read(p))),
    "man": (_man_files, _man),
    "python": (_python_files, _python),
    "package_docs": (_package_doc_files, _package_doc),
}


# -- the corpus -------------------------------------------------------------------------------------------------------
_VERSION = 1  # part of the cache key: bump when the cleaning or the sampling changes


def build_corpus(config: CorpusConfig | None = None) -> Corpus:
    """The corpus for ``config`` (default: every source, 20,000 sentences each at most, 6,000 passages), from the
    cache when the same files were read before with the same settings."""
    config = config or CorpusConfig()
    files = {name: READERS[name][0](config) for name in config.sources}
    cache = _cache_path(config, files)
    if cache is not None and cache.is_file():
        try:
            return Corpus(**json.loads(cache.read_text()))
        except (ValueError, TypeError):
            log.warning("ignoring a damaged corpus cache %s", cache)
    corpus = _build(config, files)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(corpus.__dict__))
    return corpus


def _cache_path(config: CorpusConfig, files: dict[str, list[Path]]) -> Path | None:
    if config.cache_dir is None:
        return None
    stats = {name: [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in paths] for name, paths in files.items()}
    settings = {k: v for k, v in config.to_dict().items() if k != "cache_dir"}
    key = hashlib.sha256(json.dumps([_VERSION, settings, stats]).encode()).hexdigest()[:20]
    return Path(config.cache_dir) / f"corpus-{key}.json"


def _build(config: CorpusConfig, files: dict[str, list[Path]]) -> Corpus:
    rng = random.Random(config.seed)
    is_eval = EvaluationFilter()
    seen: set[str] = set()
    corpus = Corpus(sentences=[], passages=[], config=config.to_dict())
    runs: dict[str, list[str]] = {}
    for name in config.sources:
        docs = _read_source(name, config, files[name], seen, is_eval, rng)
        found = [s for d in docs for s in d]
        corpus.found[name] = len(found)
        if not found:
            corpus.missing.append(name)
            continue
        kept = rng.sample(found, min(config.per_source, len(found)))
        corpus.kept[name] = len(kept)
        corpus.sentences += kept
        runs[name] = [p for p in _runs(docs, rng) if not is_eval(p)]
        rng.shuffle(runs[name])
    rng.shuffle(corpus.sentences)
    corpus.passages = _round_robin(runs, config.passages)
    rng.shuffle(corpus.passages)
    log.info("corpus: %d sentences, %d passages; found %s", len(corpus.sentences), len(corpus.passages), corpus.found)
    return corpus


def _read_source(name: str, config: CorpusConfig, paths: list[Path], seen: set[str], is_eval: EvaluationFilter,
                 rng: random.Random) -> list[list[str]]:  # fmt: skip
    """Documents (a file's clean sentences, in order) read in a seeded file order until ``oversample`` ×
    ``per_source`` new distinct sentences are found; sentences seen in an earlier source or file are skipped."""
    paths = list(paths)
    rng.shuffle(paths)
    reader, docs, total = READERS[name][1], [], 0
    for path in paths:
        doc = []
        for paragraph in reader(path):
            for raw in split_sentences(paragraph):
                s = clean_sentence(raw, config.min_words, config.max_words)
                if s is None or (key := _norm(s)) in seen or is_eval(s):
                    continue
                seen.add(key)
                doc.append(s)
        if doc:
            docs.append(doc)
            total += len(doc)
        if total >= config.oversample * config.per_source:
            break
    return docs


def _runs(docs: list[list[str]], rng: random.Random) -> list[str]:
    """Runs of 4–7 consecutive sentences of one document, joined."""
    out = []
    for doc in docs:
        i = 0
        while i + 4 <= len(doc):
            k = rng.randint(4, 7)
            out.append(" ".join(doc[i : i + k]))
            i += k
    return out


def _round_robin(runs: dict[str, list[str]], n: int) -> list[str]:
    """``n`` passages taken in turn from each source's (shuffled) runs, so that no single source dominates."""
    out: list[str] = []
    queues = [list(reversed(r)) for r in runs.values() if r]
    while len(out) < n and queues:
        for q in queues:
            if len(out) == n:
                break
            out.append(q.pop())
        queues = [q for q in queues if q]
    return out
