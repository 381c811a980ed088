"""The broad distillation corpus (``deepslim.data.text_corpus``) on a small fake machine: each source's format read
into the expected sentences, nothing that overlaps the evaluation sentences, deterministic for a seed, the caps and
the passages' shape, the cache, and bad settings."""

import gzip
import os

import pytest

from deepslim.data import sentences as S
from deepslim.data import text_corpus as T
from deepslim.errors import ConfigError

EVAL = S.PAIRS[0][0]  # "The train to the coast was cancelled because of the storm."
SHARES_SIX = "Yesterday she finished the marathon in just under five hours and then slept."  # 6 words of PAIRS[1][0]

WORDNET = """  1 This software and database is being provided to you, the LICENSEE, by Princeton University
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known or inferred to have its own distinct existence; "the lighthouse keeper rang a small bell every evening"; "an old entity"
00002137 03 n 02 abstraction 0 | a general concept formed by extracting common features from specific examples; "the train to the coast was cancelled because of the storm"
00002452 03 n 01 thing 0 | a separate and self-contained entity; "the farmer counted his sheep twice before the winter storms came"; "the ship sailed slowly out of the small harbour at dawn"; "many people walked along the beach in the warm evening light"; "the baker sold every loaf of bread before noon"
"""  # noqa: E501 (WordNet's one line per synset)

FORTUNES = """A clean desk is a sign of a very tired cleaner indeed.
\t\t-- Anonymous
%
Never put off until tomorrow what you can do the day after tomorrow.
%
x = 1; print(x)  # code is not a fortune
%
"""

DPKG = """Package: foo
Status: install ok installed
Description: a tool that does things
 The tool reads every file in the folder and writes a short summary of it.
 .
 It runs quickly on large folders and uses very little memory.
Homepage: https://example.org

Package: bar
Description: short
 Bar is a small library that helps programs talk to the printer.
"""

MAN = """.TH FOO 1
.SH NAME
foo \\- do things
.SH DESCRIPTION
.B Foo
prints a friendly greeting to everyone who runs it in the morning.
.PP
It never asks the user any \\fIdifficult\\fP questions at all.
"""

PYMOD = '''"""A module that keeps track of the weather in several cities at once.

Yesterday she finished the marathon in just under five hours and then slept.
Call ``update()`` to refresh; see http://example.org for the licence.
"""

def f():
    """Return the warmest city that was measured during the last week."""
'''

METADATA = """Metadata-Version: 2.4
Name: foo
License: MIT

Foo helps a gardener remember when each plant was last watered.

>>> import foo
"""


@pytest.fixture
def machine(tmp_path):
    """A fake machine with one small file per source (and a .dat file and a symlink the fortune reader skips)."""
    (tmp_path / "wn").mkdir()
    (tmp_path / "wn" / "data.noun").write_text(WORDNET)
    (tmp_path / "fortunes").mkdir()
    (tmp_path / "fortunes" / "cookie").write_text(FORTUNES)
    (tmp_path / "fortunes" / "cookie.dat").write_bytes(b"\x00\x01 Binary index that is not text at all.")
    os.symlink(tmp_path / "fortunes" / "cookie", tmp_path / "fortunes" / "cookie.u8")
    (tmp_path / "status").write_text(DPKG)
    (tmp_path / "doc" / "foo").mkdir(parents=True)
    (tmp_path / "doc" / "foo" / "README").write_text("The foo package has been tested on many old computers.\n\n"
                                                     "Copyright 2020 Someone, all rights reserved by the author.\n")
    (tmp_path / "doc" / "foo" / "copyright").write_text("This copyright file is never read by the corpus.\n")
    (tmp_path / "man1").mkdir()
    with gzip.open(tmp_path / "man1" / "foo.1.gz", "wt") as f:
        f.write(MAN)
    (tmp_path / "py" / "foo-1.0.dist-info").mkdir(parents=True)
    (tmp_path / "py" / "weather.py").write_text(PYMOD)
    (tmp_path / "py" / "foo-1.0.dist-info" / "METADATA").write_text(METADATA)
    return tmp_path


def config(root, **kw):
    paths = dict(wordnet_dir=str(root / "wn"), fortune_dir=str(root / "fortunes"), dpkg_status=str(root / "status"),
                 doc_dir=str(root / "doc"), man_dirs=(str(root / "man1"),), python_dirs=(str(root / "py"),),
                 cache_dir=None)  # fmt: skip
    return T.CorpusConfig(**(paths | kw))


def test_each_source_gives_exactly_its_clean_sentences(machine):
    c = T.build_corpus(config(machine, passages=0))
    assert set(c.sentences) == {
        "The lighthouse keeper rang a small bell every evening.",  # wordnet_examples ("an old entity"
        "The farmer counted his sheep twice before the winter storms came.",  # has too few words)
        "The ship sailed slowly out of the small harbour at dawn.",
        "Many people walked along the beach in the warm evening light.",
        "The baker sold every loaf of bread before noon.",
        "That which is perceived or known or inferred to have its own distinct existence.",  # wordnet_glosses
        "A general concept formed by extracting common features from specific examples.",
        "A separate and self-contained entity.",
        "A clean desk is a sign of a very tired cleaner indeed.",  # fortunes: no attribution, no code
        "Never put off until tomorrow what you can do the day after tomorrow.",
        "The tool reads every file in the folder and writes a short summary of it.",  # debian
        "It runs quickly on large folders and uses very little memory.",
        "Bar is a small library that helps programs talk to the printer.",
        "The foo package has been tested on many old computers.",  # docs: the copyright line dropped
        "Foo prints a friendly greeting to everyone who runs it in the morning.",  # man: macros and escapes gone
        "It never asks the user any difficult questions at all.",
        "A module that keeps track of the weather in several cities at once.",  # python: code/URL lines dropped
        "Return the warmest city that was measured during the last week.",
        "Foo helps a gardener remember when each plant was last watered.",  # package_docs
    }
    assert c.found == {"wordnet_examples": 5, "wordnet_glosses": 3, "fortunes": 2, "debian": 3, "docs": 1, "man": 2,
                       "python": 2, "package_docs": 1} == c.kept and c.missing == []  # fmt: skip


def test_nothing_overlaps_the_evaluation_sentences(machine):
    texts = T.build_corpus(config(machine)).texts()
    assert not any(EVAL.lower().rstrip(".") in t.lower() for t in texts)  # planted in WordNet: removed
    assert SHARES_SIX not in texts and not any("finished the marathon" in t for t in texts)  # planted in a docstring
    is_eval = T.EvaluationFilter()
    assert all(is_eval(t) for t in S.sentences() + S.passage_set()[0])
    assert is_eval("Honestly, " + EVAL.lower()) and is_eval(SHARES_SIX)
    assert not is_eval("The baker sold every loaf of bread before noon.")
    assert not any(is_eval(t) for t in texts)


def test_the_corpus_is_deterministic_for_a_seed_and_its_order_follows_the_seed(machine):
    a, b = (T.build_corpus(config(machine, seed=3)) for _ in range(2))
    assert a.sentences == b.sentences and a.passages == b.passages
    others = [T.build_corpus(config(machine, seed=s)).sentences for s in (4, 5)]
    assert all(set(o) == set(a.sentences) for o in others) and any(o != a.sentences for o in others)


def test_caps_passages_and_missing_sources_are_counted(machine):
    c = T.build_corpus(config(machine, per_source=2, passages=5, man_dirs=(str(machine / "none"),)))
    assert c.kept["wordnet_examples"] == 2 and c.found["wordnet_examples"] == 5 and c.kept["debian"] == 2
    assert c.missing == ["man"] and "man" not in c.kept and len(c.sentences) == sum(c.kept.values())
    assert len(c.passages) == 1  # only WordNet's examples run to 4 sentences in one document
    assert 4 <= len(T.split_sentences(c.passages[0])) <= 7
    assert all(s in {"The lighthouse keeper rang a small bell every evening."} | set(T.build_corpus(
        config(machine, passages=0)).sentences) for s in T.split_sentences(c.passages[0]))  # fmt: skip
    summary = c.summary()
    assert summary["sentences"] == len(c.sentences) and summary["words"] == sum(len(t.split()) for t in c.texts())


def test_a_cached_corpus_is_read_back_and_a_changed_file_rebuilds_it(machine):
    cfg = config(machine, cache_dir=str(machine / "cache"))
    first = T.build_corpus(cfg)
    assert len(list((machine / "cache").glob("corpus-*.json"))) == 1
    assert T.build_corpus(cfg).__dict__ == first.__dict__
    (machine / "status").write_text(DPKG + "\nPackage: baz\nDescription: x\n Baz draws simple pictures of cats "
                                           "and dogs for children.\n")  # fmt: skip
    rebuilt = T.build_corpus(cfg)
    assert "Baz draws simple pictures of cats and dogs for children." in rebuilt.sentences
    assert len(list((machine / "cache").glob("corpus-*.json"))) == 2


@pytest.mark.parametrize("text", [
    "Call ``update()`` to refresh the weather.", "See https://example.org for all the details.",
    "Set x = 1 before you call the function.", "Use torch.nn.Linear for the projection here.",
    "The getItem method returns the item you asked for.", "Distributed under the GNU General Public License.",
    "the sentence has no capital letter at all.", "This one does not end with a full stop",
    "Too short to keep.", "Read the file in /etc/passwd before you start.",
])  # fmt: skip
def test_clean_sentence_rejects_code_markup_paths_and_licence_text(text):
    assert T.clean_sentence(text) is None


def test_clean_sentence_keeps_plain_sentences_with_whitespace_collapsed():
    assert T.clean_sentence('  "It rained all day,\n  so we stayed at home."  ') == \
        "It rained all day, so we stayed at home."  # fmt: skip
    assert T.split_sentences("It rained. We stayed home! Did you? yes.") == ["It rained.", "We stayed home!",
                                                                             "Did you? yes."]  # fmt: skip


def test_bad_settings_are_refused_and_the_config_round_trips():
    with pytest.raises(ConfigError, match="unknown corpus source 'wiki'"):
        T.CorpusConfig(sources=("wiki",))
    with pytest.raises(ConfigError, match="per_source"):
        T.CorpusConfig(per_source=0)
    with pytest.raises(ConfigError, match="min_words"):
        T.CorpusConfig(min_words=9, max_words=8)
    cfg = T.CorpusConfig(sources=("fortunes", "man"), per_source=7, man_dirs=("/x",))
    assert T.CorpusConfig.from_dict(cfg.to_dict()) == cfg
