"""Word and character error rates with a substitution/insertion/deletion breakdown, in pure Python.

Text is compared after one of two normalizations (`NORMALIZATIONS`):

* ``"raw"``: whitespace collapsed and stripped, nothing else; case and punctuation count as errors.
* ``"normalized"``: Unicode NFC, lowercase, ё folded to е, hyphens and dashes read as spaces ("северо-запад"
  equals "северо запад"), every other punctuation mark and invisible format character removed, whitespace
  collapsed. This is the figure to report for Russian ASR, where references differ in ё and punctuation habits.

Rates are corpus-level: total errors over total reference tokens, not a mean of per-utterance rates, so short
utterances do not dominate. CER runs over the characters of the normalized string, including the single spaces
left between words (the same convention as `jiwer.cer`): a merged or split word costs one character error.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Hashable, Iterable, NamedTuple, Sequence

NORMALIZATIONS = ("raw", "normalized")
UNITS = ("word", "char")

# Hyphen-like characters separate the parts of a compound, so they become spaces rather than vanish.
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
# Symbols removed on top of Unicode punctuation (P*): quote and accent marks that some fonts and keyboards
# produce as modifier symbols (Sk) rather than punctuation.
_EXTRA_STRIP = set("«»„“”‚‘’‹›`´^¨~|•·")


class _NormalizeTable(dict):
    """`str.translate` table that classifies each code point once, on first sight."""

    def __missing__(self, code: int) -> str | None:
        ch = chr(code)
        if ch in _DASHES:
            out: str | None = " "
        elif ch in _EXTRA_STRIP or unicodedata.category(ch)[0] == "P" or unicodedata.category(ch) == "Cf":
            out = None
        elif ch == "ё":
            out = "е"
        else:
            out = ch
        self[code] = out
        return out


_TABLE = _NormalizeTable()


def normalize(text: str, mode: str) -> str:
    """Return `text` under normalization `mode` (one of `NORMALIZATIONS`)."""
    if mode == "raw":
        return " ".join(text.split())
    if mode == "normalized":
        # NFC first so that "е" + combining diaeresis folds like a precomposed "ё".
        text = unicodedata.normalize("NFC", text).lower()
        return " ".join(text.translate(_TABLE).split())
    raise ValueError(f"unknown normalization {mode!r}; expected one of {', '.join(NORMALIZATIONS)}")


def tokenize(text: str, mode: str, unit: str = "word") -> list[str]:
    """Normalize `text` and split it into words or characters (spaces between words count as characters)."""
    norm = normalize(text, mode)
    if unit == "word":
        return norm.split()
    if unit == "char":
        return list(norm)
    raise ValueError(f"unknown unit {unit!r}; expected one of {', '.join(UNITS)}")


class Counts(NamedTuple):
    """Edit operations of one minimum-cost alignment, plus the reference length."""

    sub: int
    ins: int
    dele: int
    ref_len: int

    @property
    def errors(self) -> int:
        return self.sub + self.ins + self.dele


def align_counts(ref_tokens: Sequence[Hashable], hyp_tokens: Sequence[Hashable]) -> Counts:
    """Levenshtein distance between two token sequences, split into substitutions, insertions and deletions.

    The total (sub + ins + dele) is the plain edit distance. Several alignments can reach it ("a b" -> "b c" is
    two substitutions, or a deletion and an insertion); the one with the most substitutions is reported.
    """
    n_ref = len(ref_tokens)
    # A common prefix or suffix is matched in every optimal alignment; trimming it makes near-correct
    # hypotheses, the usual case, cost almost nothing.
    lo = 0
    limit = min(n_ref, len(hyp_tokens))
    while lo < limit and ref_tokens[lo] == hyp_tokens[lo]:
        lo += 1
    ref_end, hyp_end = n_ref, len(hyp_tokens)
    while ref_end > lo and hyp_end > lo and ref_tokens[ref_end - 1] == hyp_tokens[hyp_end - 1]:
        ref_end -= 1
        hyp_end -= 1
    ref = ref_tokens[lo:ref_end]
    hyp = hyp_tokens[lo:hyp_end]
    n, m = len(ref), len(hyp)
    if n == 0 or m == 0:
        return Counts(sub=0, ins=m, dele=n, ref_len=n_ref)

    # Each edit costs `big`, and an insertion or deletion one unit more than a substitution. Since
    # ins + dele <= n + m < big, the minimum cost first minimizes the number of edits and then, among such
    # alignments, the number of gaps: the substitution preference is global, not a backtrace tie-break, and the
    # counts follow from the final cell alone, so two rows of memory suffice.
    big = n + m + 1
    gap = big + 1
    prev = list(range(0, (m + 1) * gap, gap))
    for i in range(1, n + 1):
        r = ref[i - 1]
        left = i * gap
        cur = [left]
        append = cur.append
        for j in range(1, m + 1):
            best = prev[j - 1] if r == hyp[j - 1] else prev[j - 1] + big
            up = prev[j] + gap
            if up < best:
                best = up
            left += gap
            if left < best:
                best = left
            append(best)
            left = best
        prev = cur

    errors, gaps = divmod(prev[m], big)
    # ins - dele is fixed by the lengths, and ins + dele = gaps.
    ins = (gaps + m - n) // 2
    dele = gaps - ins
    return Counts(sub=errors - gaps, ins=ins, dele=dele, ref_len=n_ref)


@dataclass
class ErrorRate:
    """Error counts over some reference tokens; add instances to aggregate over a corpus.

    `rate` is errors / ref_len. With an empty reference it is 0.0 when there are no errors, and otherwise the
    bare number of errors (as if the reference had one token), so hallucinated output on silence still shows.
    """

    errors: int = 0
    ref_len: int = 0
    sub: int = 0
    ins: int = 0
    dele: int = 0

    @property
    def rate(self) -> float:
        if self.ref_len == 0:
            return float(self.errors)
        return self.errors / self.ref_len

    @classmethod
    def from_counts(cls, counts: Counts) -> ErrorRate:
        return cls(counts.errors, counts.ref_len, counts.sub, counts.ins, counts.dele)

    def __add__(self, other: ErrorRate) -> ErrorRate:
        if not isinstance(other, ErrorRate):
            return NotImplemented
        return ErrorRate(
            self.errors + other.errors,
            self.ref_len + other.ref_len,
            self.sub + other.sub,
            self.ins + other.ins,
            self.dele + other.dele,
        )

    def __radd__(self, other: object) -> ErrorRate:
        # Lets the built-in sum() start from its default 0.
        if other == 0:
            return self
        return NotImplemented

    def __str__(self) -> str:
        return (f"{100 * self.rate:.2f}% ({self.errors}/{self.ref_len}: "
                f"S={self.sub} I={self.ins} D={self.dele})")


def utterance_errors(ref: str, hyp: str, mode: str = "normalized", unit: str = "word") -> ErrorRate:
    """Errors of one hypothesis against its reference, over words or characters."""
    counts = align_counts(tokenize(ref, mode, unit), tokenize(hyp, mode, unit))
    return ErrorRate.from_counts(counts)


def _corpus(refs: Sequence[str], hyps: Sequence[str], mode: str, unit: str) -> ErrorRate:
    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError("refs and hyps must be sequences of strings, not a single string")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses; they must pair up one to one")
    total = ErrorRate()
    for ref, hyp in zip(refs, hyps):
        total = total + utterance_errors(ref, hyp, mode, unit)
    return total


def wer(refs: Sequence[str], hyps: Sequence[str], mode: str = "normalized") -> ErrorRate:
    """Corpus word error rate: total word errors over total reference words."""
    return _corpus(refs, hyps, mode, "word")


def cer(refs: Sequence[str], hyps: Sequence[str], mode: str = "normalized") -> ErrorRate:
    """Corpus character error rate over normalized strings, single spaces between words included."""
    return _corpus(refs, hyps, mode, "char")


def per_language(
    rows: Iterable[tuple[str, str, str]], mode: str = "normalized"
) -> dict[str, tuple[ErrorRate, ErrorRate]]:
    """Corpus (WER, CER) per language from (lang, ref, hyp) rows, languages in order of first appearance."""
    out: dict[str, tuple[ErrorRate, ErrorRate]] = {}
    for lang, ref, hyp in rows:
        w, c = out.get(lang, (ErrorRate(), ErrorRate()))
        out[lang] = (w + utterance_errors(ref, hyp, mode, "word"), c + utterance_errors(ref, hyp, mode, "char"))
    return out
