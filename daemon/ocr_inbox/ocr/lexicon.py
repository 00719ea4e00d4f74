"""Word lists for Latin text: an unsure letter the recognizer had a second choice for.

PP-OCRv6 tiny misreads fax-quality Latin forms one letter at a time (``CONFIDENTLAL``,
``reciplent``, ``addrcss``, ``Novembor``), and at those letters the right one is
usually its second or third choice. So, as dictionary-driven OCR engines do, a
word that is not in the word list and has unsure letters is checked against the
recognizer's own alternatives at those letters: if one spelling made of them is a
known word, the most probable such spelling is taken.

Kept narrow on purpose, so that names, codes and other languages pass untouched:
only Latin letters, words of 3 letters or more, at most the 3 least sure letters,
only substitutions (never a letter added or removed), the word's case kept, at most
1 letter changed in a word shorter than 5, 2 otherwise.

The correction happens inside PaddleX's CTC decoding, between its choice of the best
class at each time step and its decoding of them (``LexiconDecode``): PaddleX then
decodes the corrected classes itself, with its word boxes and the same line score.
The words changed are kept per line (``LexiconDecode.changes``) for its JSON.
Measured on the corpus in docs/BENCHMARKS.md ("Accuracy at tiny's speed").

Word lists: pyspellchecker's word frequencies (MIT; counts from OpenSubtitles),
words seen at least ``MIN_COUNT`` times.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

#: a letter read with a lower probability is unsure
UNSURE_BELOW = 0.97
#: a second choice is considered from this probability on
ALTERNATIVE_FROM = 0.01
#: a word counts as known from this many occurrences in the frequency list
MIN_COUNT = 300
MIN_LETTERS = 3
MAX_UNSURE = 3
#: alternatives looked at per unsure letter (blank and non-letters are skipped)
TOP_K = 4


def languages() -> list[str]:
    """The word lists pyspellchecker ships (``en``, ``de``, ``fr`` …)."""
    res = importlib.resources.files("spellchecker") / "resources"
    return sorted(p.name.removesuffix(".json.gz") for p in res.iterdir() if p.name.endswith(".json.gz"))


@functools.lru_cache(maxsize=8)
def _words(lang: str) -> frozenset[str]:
    """The words seen ``MIN_COUNT`` times or more. Read line by line (the lists are written
    one ``"word": count,`` a line): ``json.load`` built all 160,000 entries of the English
    list at once, and a worker kept the 24 MiB."""
    path = importlib.resources.files("spellchecker") / "resources" / f"{lang}.json.gz"
    with path.open("rb") as raw:
        text = gzip.decompress(raw.read()).decode("utf-8")
    words = set()
    for line in text.splitlines():
        key, sep, count = line.rstrip(",").rpartition(": ")
        if sep and count.isdigit() and int(count) >= MIN_COUNT:
            w = json.loads(key) if "\\" in key else key[1:-1]  # a JSON string
            if w.isalpha():
                words.add(w)
    if not words:  # written some other way by a later pyspellchecker: read it as JSON
        counts: dict[str, int] = json.loads(text)
        words = {w for w, n in counts.items() if n >= MIN_COUNT and w.isalpha()}
    return frozenset(words)


def _latin_letter(c: str) -> bool:
    # Basic Latin to Latin Extended-B: no CJK, Greek or Cyrillic word is ever touched
    return len(c) == 1 and c.isalpha() and ord(c) < 0x250


def _same_case(word: str, like: str) -> bool:
    return word.isupper() == like.isupper() and word.islower() == like.islower() and word[0].isupper() == like[0].isupper()


@dataclass(frozen=True)
class Letter:
    """One decoded character: its first choice and the alternatives at its first time step."""

    char: str
    prob: float
    alternatives: tuple[tuple[str, float], ...] = ()


class Lexicon:
    def __init__(self, words: Iterable[str]) -> None:
        self._words = frozenset(w.lower() for w in words)

    @classmethod
    def load(cls, langs: Sequence[str]) -> Lexicon:
        return cls(itertools.chain.from_iterable(_words(lang) for lang in langs))

    def known(self, word: str) -> bool:
        return word.lower() in self._words

    def respell(self, word: Sequence[Letter]) -> str | None:
        """A known spelling of an unknown ``word`` from its letters' alternatives, or None."""
        text = "".join(ltr.char for ltr in word)
        if len(word) < MIN_LETTERS or not all(_latin_letter(ltr.char) for ltr in word) or self.known(text):
            return None
        unsure = sorted((ltr.prob, i) for i, ltr in enumerate(word) if ltr.prob < UNSURE_BELOW)[:MAX_UNSURE]
        if not unsure:
            return None
        choices = []
        for _, i in unsure:
            alts = [(c, p) for c, p in word[i].alternatives if p >= ALTERNATIVE_FROM and _latin_letter(c)]
            choices.append([(i, word[i].char, word[i].prob), *((i, c, p) for c, p in alts)])
        most = 1 if len(word) < 5 else 2
        best: tuple[float, str] | None = None
        for combo in itertools.product(*choices):
            changed = sum(1 for i, c, _ in combo if c != word[i].char)
            if changed == 0 or changed > most:
                continue
            letters = [ltr.char for ltr in word]
            for i, c, _ in combo:
                letters[i] = c
            cand = "".join(letters)
            if not _same_case(cand, text) or not self.known(cand):
                continue
            logp = sum(math.log(max(p, 1e-12)) for _, _, p in combo)
            if best is None or logp > best[0]:
                best = (logp, cand)
        return None if best is None else best[1]


class Respelt(NamedTuple):
    """One word of a line respelled: where it starts in the line's letters, as read, as written."""

    start: int
    read: str
    written: str


def respell_line(lex: Lexicon, letters: Sequence[Letter]) -> list[Respelt]:
    """Every word respelled in a decoded line, in order."""
    out: list[Respelt] = []
    n = len(letters)
    i = 0
    while i < n:
        if not letters[i].char.strip():
            i += 1
            continue
        j = i
        while j < n and letters[j].char.strip():
            j += 1
        a, b = i, j  # the word inside its punctuation: "(reciplent)," -> reciplent
        while a < b and not letters[a].char.isalnum():
            a += 1
        while b > a and not letters[b - 1].char.isalnum():
            b -= 1
        new = lex.respell(letters[a:b]) if b > a else None
        if new is not None:
            out.append(Respelt(a, "".join(ltr.char for ltr in letters[a:b]), new))
        i = j
    return out


class LexiconDecode:
    """PaddleX's CTC decoder (a recognition predictor's ``post_op``), respelling before it decodes.

    PaddleX's decoder takes each time step's best class and its probability, then calls
    its own ``decode(text_index, text_prob, ...)`` with them. That method is replaced on
    this one decoder object: it gets the same arrays (nothing computed twice), changes the
    classes of the letters respelled, and decodes them with PaddleX's code, word boxes
    included. The full probabilities, needed for the alternatives of unsure letters
    only, are kept from the call. The line's score stays the one PaddleX computes: the
    probabilities of what the recognizer read.

    What it changed is kept in ``changes``, by the decoded line's (text, score): PaddleX
    hands lines back in its own order, and a line's text and score find it again there
    (``engine.recognise`` records them in the JSON, then ``clear``s them each page).
    """

    def __init__(self, decoder: Any, lex: Lexicon) -> None:
        self.decoder = decoder
        self.lex = lex
        self.character: list[str] = list(decoder.character)
        self._index = {c: k for k, c in reversed(list(enumerate(self.character)))}
        self._decode = decoder.decode
        decoder.decode = self._respelled_decode
        self._probs: Any = None
        self.respelled = 0  # letters changed so far
        #: (decoded text, score) -> the words respelled in it, (as read, as written)
        self.changes: dict[tuple[str, float], tuple[tuple[str, str], ...]] = {}

    def __call__(self, pred: Sequence[Any], **kwargs: Any) -> Any:
        self._probs = pred[0]  # (batch, time steps, classes)
        try:
            return self.decoder(pred, **kwargs)
        finally:
            self._probs = None

    def _respelled_decode(self, text_index: np.ndarray, text_prob: np.ndarray | None = None,
                          is_remove_duplicate: bool = False, return_word_box: bool = False) -> Any:
        words: dict[int, list[Respelt]] = {}
        if text_prob is not None and self._probs is not None:
            fixed = None
            for b in range(len(text_index)):
                steps, words[b] = self._respell(text_index[b], text_prob[b], self._probs[b])
                for t, k in steps:
                    if fixed is None:
                        fixed = np.array(text_index)  # PaddleX's own array stays as it was
                    fixed[b, t] = k
            if fixed is not None:
                text_index = fixed
        decoded = self._decode(text_index, text_prob, is_remove_duplicate, return_word_box)
        for b, respelt in words.items():
            if respelt:
                text, score = decoded[b][0], decoded[b][1]
                self.changes[(str(text), float(score))] = tuple((w.read, w.written) for w in respelt)
        return decoded

    def respelt(self, text: str, score: float) -> tuple[tuple[str, str], ...]:
        """The words respelled in the decoded line (``text``, ``score``); () when none."""
        return self.changes.get((text, float(score)), ())

    def clear(self) -> None:
        self.changes.clear()

    def _respell(self, idx: np.ndarray, prob: np.ndarray, p: Any) -> tuple[list[tuple[int, int]], list[Respelt]]:
        """(time step, class) for each time step of one line whose letter is respelled, and the words."""
        first = np.ones(len(idx), dtype=bool)
        first[1:] = idx[1:] != idx[:-1]
        steps = np.flatnonzero(first & (idx != 0))  # each decoded character's first time step
        top = prob[steps]
        if len(steps) == 0 or float(top.min()) >= UNSURE_BELOW:
            return [], []  # nothing unsure: the common case, one vectorised check
        if not any(_latin_letter(self.character[idx[t]]) for t in steps[top < UNSURE_BELOW]):
            return [], []  # unsure, but not a Latin letter (CJK, digits, punctuation)
        letters = []
        for t, c, pr in zip(steps, idx[steps], top, strict=True):
            alts: tuple[tuple[str, float], ...] = ()
            if pr < UNSURE_BELOW:
                row = np.asarray(p[t])
                best = np.argpartition(-row, TOP_K)[:TOP_K]
                alts = tuple((self.character[k], float(row[k])) for k in best if k not in (0, c))
            letters.append(Letter(self.character[c], float(pr), alts))
        out = []
        words = respell_line(self.lex, letters)
        for w in words:
            for i, (was, new) in enumerate(zip(w.read, w.written, strict=True), start=w.start):
                if was == new:
                    continue
                t, old = int(steps[i]), int(idx[steps[i]])
                while t < len(idx) and idx[t] == old:  # the whole run CTC collapses into this letter
                    out.append((t, self._index[new]))
                    t += 1
                self.respelled += 1
        return out, words
