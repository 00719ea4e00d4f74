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

The correction happens *before* PaddleX's CTC decoding: at each corrected letter's
time steps, the chosen letter's probability and the first choice's are swapped, so
PaddleX then decodes the corrected text itself, with its word boxes and the same
line score. Measured on the corpus in docs/BENCHMARKS.md ("Word lists").

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
    path = importlib.resources.files("spellchecker") / "resources" / f"{lang}.json.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        counts: dict[str, int] = json.load(f)
    return frozenset(w for w, n in counts.items() if n >= MIN_COUNT and w.isalpha())


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


def respell_line(lex: Lexicon, letters: Sequence[Letter]) -> list[tuple[int, str]]:
    """(index in ``letters``, new letter) for every letter respelled in a decoded line."""
    out: list[tuple[int, str]] = []
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
            out += [(a + k, c) for k, c in enumerate(new) if c != letters[a + k].char]
        i = j
    return out


class LexiconDecode:
    """PaddleX's CTC decoder (a recognition predictor's ``post_op``), with the respelling before it.

    ``decode.character`` maps class indices to characters (0 is CTC's blank).
    """

    def __init__(self, decode: Callable[..., Any], lex: Lexicon) -> None:
        self.decode = decode
        self.lex = lex
        self.character: list[str] = list(decode.character)  # type: ignore[attr-defined]
        self._index = {c: k for k, c in reversed(list(enumerate(self.character)))}
        self.respelled = 0  # letters changed so far (for the log)

    def __call__(self, pred: Sequence[Any], **kwargs: Any) -> Any:
        probs = np.asarray(pred[0])  # (batch, time steps, classes)
        copied = False
        for b in range(probs.shape[0]):
            swaps = self._respell(probs[b])
            if swaps:
                if not copied:  # the runner's output stays as it was
                    probs, copied = probs.copy(), True
                for t, old, new in swaps:
                    probs[b, t, old], probs[b, t, new] = probs[b, t, new], probs[b, t, old]
        return self.decode([probs, *pred[1:]], **kwargs)

    def _respell(self, p: np.ndarray) -> list[tuple[int, int, int]]:
        """(time step, class read, class wanted) for each time step to swap in one line's ``p``."""
        idx = p.argmax(axis=-1)
        first = np.ones(len(idx), dtype=bool)
        first[1:] = idx[1:] != idx[:-1]
        steps = np.flatnonzero(first & (idx != 0))  # each decoded character's first time step
        top = p[steps, idx[steps]]
        if len(steps) == 0 or float(top.min()) >= UNSURE_BELOW:
            return []  # nothing unsure: the common case, one vectorised check
        letters = []
        for t, c, pr in zip(steps, idx[steps], top, strict=True):
            alts: tuple[tuple[str, float], ...] = ()
            if pr < UNSURE_BELOW:
                best = np.argpartition(-p[t], TOP_K)[:TOP_K]
                alts = tuple((self.character[k], float(p[t, k])) for k in best if k not in (0, c))
            letters.append(Letter(self.character[c], float(pr), alts))
        swaps = []
        for i, new in respell_line(self.lex, letters):
            t, old = int(steps[i]), int(idx[steps[i]])
            while t < len(idx) and idx[t] == old:  # the whole run CTC collapses into this letter
                swaps.append((t, old, self._index[new]))
                t += 1
            self.respelled += 1
        return swaps
