"""Tests for common.quality.metrics: hand-computed cases, an independent edit distance, jiwer, and normalization."""
from __future__ import annotations

import functools
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.quality.metrics import NORMALIZATIONS, Counts, ErrorRate, align_counts, cer, normalize, per_language, tokenize, utterance_errors, wer

REPO = Path(__file__).resolve().parents[1]

WORDS = (
    "мама мыла раму кот спит собака лает громко дом окно улица город москва река лес поле небо солнце "
    "дождь снег зима лето осень весна утро вечер ночь день год время человек работа слово жизнь рука "
    "глаз голова дверь стол книга вода земля друг ёлка ёж север юг запад восток и в не на я он она мы "
    "вы они это что как так уже ещё только очень"
).split()
PUNCT = [",", ".", "!", "?", ":", ";", " —", "…"]


# ---------------------------------------------------------------------------------------------------------
# Independent reference: top-down memoized recursion over suffixes, choosing the lexicographically smallest
# (edits, -substitutions) and carrying the counts explicitly. Shares no code or trick with align_counts.
# ---------------------------------------------------------------------------------------------------------
def reference_counts(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """(sub, ins, dele) of a minimum-edit alignment with the most substitutions."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * (len(ref) + len(hyp)) + 100))

    @functools.lru_cache(maxsize=None)
    def best(i: int, j: int) -> tuple[int, int, int, int]:
        # Returns (edits, -sub, ins, dele) for ref[i:] against hyp[j:].
        if i == len(ref):
            return (len(hyp) - j, 0, len(hyp) - j, 0)
        if j == len(hyp):
            return (len(ref) - i, 0, 0, len(ref) - i)
        options = []
        e, ns, ins, dele = best(i + 1, j + 1)
        if ref[i] == hyp[j]:
            options.append((e, ns, ins, dele))
        else:
            options.append((e + 1, ns - 1, ins, dele))
        e, ns, ins, dele = best(i + 1, j)
        options.append((e + 1, ns, ins, dele + 1))
        e, ns, ins, dele = best(i, j + 1)
        options.append((e + 1, ns, ins + 1, dele))
        return min(options)

    edits, neg_sub, ins, dele = best(0, 0)
    assert edits == -neg_sub + ins + dele
    return -neg_sub, ins, dele


def random_pair(rng: random.Random) -> tuple[str, str]:
    """A reference sentence and a hypothesis with random word edits, case and punctuation changes."""
    ref = [rng.choice(WORDS) for _ in range(rng.randint(1, 14))]
    hyp: list[str] = []
    for word in ref:
        roll = rng.random()
        if roll < 0.1:
            continue  # deletion
        if roll < 0.2:
            hyp.append(rng.choice(WORDS))  # substitution (sometimes by the same word)
        elif roll < 0.25:
            hyp.append(word[:-1] or word)  # near-miss, a character-level error
        else:
            hyp.append(word)
        if rng.random() < 0.1:
            hyp.append(rng.choice(WORDS))  # insertion
    hyp_text = " ".join(hyp)
    if rng.random() < 0.3:
        hyp_text = hyp_text.capitalize() + rng.choice(PUNCT)
    return " ".join(ref), hyp_text


def random_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    pairs = [random_pair(rng) for _ in range(n)]
    return [r for r, _ in pairs], [h for _, h in pairs]


# --- hand-computed cases -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ref, hyp, expected",
    [
        # Identical: nothing to do.
        ("мама мыла раму", "мама мыла раму", (0, 0, 0, 3)),
        # "мыла" -> "мыл" is one substitution, trailing "утром" one insertion: 2 errors over 3 words.
        ("мама мыла раму", "мама мыл раму утром", (1, 1, 0, 3)),
        # "я" and "сейчас" missing: 2 deletions over 4 words.
        ("я иду домой сейчас", "иду домой", (0, 0, 2, 4)),
        # Two edits either way (sub+sub, or del "раз" + match "два" + ins "три"): two substitutions reported.
        ("раз два", "два три", (2, 0, 0, 2)),
        # Empty hypothesis: every reference word deleted.
        ("кот спит", "", (0, 0, 2, 2)),
        # Word order swap "a b c" -> "b a c": two substitutions (or del+ins), never three.
        ("кот пёс дом", "пёс кот дом", (2, 0, 0, 3)),
    ],
)
def test_hand_computed_word_counts(ref: str, hyp: str, expected: tuple[int, int, int, int]) -> None:
    counts = align_counts(ref.split(), hyp.split())
    assert counts == Counts(*expected)
    assert counts.errors == sum(expected[:3])


def test_hand_computed_corpus_wer_is_not_a_mean_of_utterance_rates() -> None:
    # "кот спит" -> "кот не спит": 1 insertion over 2 words; "собака лает громко" -> "собака лает":
    # 1 deletion over 3 words. Corpus WER = (1 + 1) / (2 + 3) = 0.4, while the mean of rates is 0.4167.
    result = wer(["кот спит", "собака лает громко"], ["кот не спит", "собака лает"])
    assert result == ErrorRate(errors=2, ref_len=5, sub=0, ins=1, dele=1)
    assert result.rate == pytest.approx(0.4)


def test_hand_computed_cer() -> None:
    # "кот" -> "кит": one substituted letter over 3 characters.
    assert cer(["кот"], ["кит"]).rate == pytest.approx(1 / 3)
    # "мы шли" -> "мышли": the space between words is a character, so a merge costs 1 deletion over 6.
    assert cer(["мы шли"], ["мышли"]) == ErrorRate(errors=1, ref_len=6, sub=0, ins=0, dele=1)
    # Extra spaces are collapsed before counting, so they are not errors.
    assert cer(["мы шли"], ["  мы   шли "]).errors == 0


def test_kitten_sitting() -> None:
    # Classic example: k->s, e->i substitutions, then "g" inserted: distance 3.
    assert align_counts(list("kitten"), list("sitting")) == Counts(sub=2, ins=1, dele=0, ref_len=6)


# --- empty references and aggregation --------------------------------------------------------------------
def test_empty_reference_rates() -> None:
    assert utterance_errors("", "").rate == 0.0
    silence = utterance_errors("", "шум")
    assert silence == ErrorRate(errors=1, ref_len=0, sub=0, ins=1, dele=0)
    assert silence.rate == 1.0  # documented: errors as a float when the reference is empty
    assert utterance_errors("", "раз два три").rate == 3.0
    assert utterance_errors("!!!", "", mode="normalized").rate == 0.0  # punctuation only normalizes to empty


def test_error_rate_addition_and_sum() -> None:
    a = ErrorRate(errors=2, ref_len=10, sub=1, ins=1, dele=0)
    b = ErrorRate(errors=3, ref_len=5, sub=0, ins=0, dele=3)
    assert a + b == ErrorRate(errors=5, ref_len=15, sub=1, ins=1, dele=3)
    assert sum([a, b]) == a + b
    assert (a + b).rate == pytest.approx(5 / 15)
    assert ErrorRate().rate == 0.0
    assert "33.33%" in str(a + b)


def test_length_mismatch_and_single_string() -> None:
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["а", "б"], ["а"])
    with pytest.raises(ValueError):
        cer(["а"], [])
    with pytest.raises(TypeError):
        wer("мама мыла раму", "мама мыла раму")  # type: ignore[arg-type]


def test_per_language() -> None:
    rows = [
        ("ru", "мама мыла раму", "мама мыла раму"),
        ("en", "hello world", "hello word"),
        ("ru", "кот спит", "кот"),
        ("en", "good morning", "good morning"),
    ]
    result = per_language(rows)
    assert list(result) == ["ru", "en"]
    ru_wer, ru_cer = result["ru"]
    # ru: 0 + 1 deleted word over 3 + 2 words; characters: " спит" deleted = 5 over 14 + 8.
    assert ru_wer == ErrorRate(errors=1, ref_len=5, sub=0, ins=0, dele=1)
    assert ru_cer == ErrorRate(errors=5, ref_len=22, sub=0, ins=0, dele=5)
    en_wer, en_cer = result["en"]
    # en: "world" -> "word" is 1 substituted word of 4; one deleted "l" of 11 + 12 characters.
    assert en_wer.rate == pytest.approx(1 / 4)
    assert en_cer == ErrorRate(errors=1, ref_len=23, sub=0, ins=0, dele=1)


# --- normalization ---------------------------------------------------------------------------------------
def test_normalization_switches() -> None:
    # Case and punctuation make both words wrong in raw mode, and disappear in normalized mode.
    assert wer(["Привет, мир!"], ["привет мир"], mode="raw").rate == 1.0
    assert wer(["Привет, мир!"], ["привет мир"], mode="normalized").rate == 0.0
    assert wer(["ёлка"], ["елка"], mode="raw").rate == 1.0
    assert wer(["Ёлка"], ["елка"], mode="normalized").rate == 0.0
    # Hyphenated compound: one word against two in raw mode (1 sub + 1 ins over 1 word), equal when normalized.
    assert wer(["северо-запад"], ["северо запад"], mode="raw").rate == 2.0
    assert wer(["северо-запад"], ["северо запад"], mode="normalized").rate == 0.0
    assert cer(["Ёж."], ["еж"], mode="raw").errors == 2
    assert cer(["Ёж."], ["еж"], mode="normalized").errors == 0


@pytest.mark.parametrize(
    "text, raw, normalized",
    [
        ("  Привет,\t мир!\n", "Привет, мир!", "привет мир"),
        ("«Ёлка» — это „дерево“", "«Ёлка» — это „дерево“", "елка это дерево"),
        ("северо–запад и юго—восток", "северо–запад и юго—восток", "северо запад и юго восток"),
        ("е\u0308ж", "е\u0308ж", "еж"),  # decomposed ё folds too
        ("д’Артаньян (1625)…", "д’Артаньян (1625)…", "дартаньян 1625"),
        ("пере\u00adнос", "пере\u00adнос", "перенос"),  # soft hyphen is invisible, not a word break
        ("", "", ""),
    ],
)
def test_normalize_modes(text: str, raw: str, normalized: str) -> None:
    assert normalize(text, "raw") == raw
    assert normalize(text, "normalized") == normalized


def test_unknown_mode_and_unit() -> None:
    with pytest.raises(ValueError, match="raw, normalized"):
        normalize("текст", "lower")
    with pytest.raises(ValueError):
        wer(["а"], ["а"], mode="none")
    with pytest.raises(ValueError, match="word, char"):
        tokenize("текст", "raw", unit="phoneme")
    assert NORMALIZATIONS == ("raw", "normalized")


# --- against an independent algorithm and jiwer ----------------------------------------------------------
@pytest.mark.parametrize("mode", NORMALIZATIONS)
@pytest.mark.parametrize("unit", ["word", "char"])
def test_against_recursive_reference(mode: str, unit: str) -> None:
    refs, hyps = random_pairs(60, seed=7)
    for ref, hyp in zip(refs, hyps):
        r, h = tokenize(ref, mode, unit), tokenize(hyp, mode, unit)
        got = align_counts(r, h)
        assert (got.sub, got.ins, got.dele) == reference_counts(r, h), (ref, hyp)
        assert got.ref_len == len(r)


def test_against_recursive_reference_small_alphabet() -> None:
    # Few distinct symbols means many equal-cost alignments: the hardest case for the substitution preference.
    rng = random.Random(3)
    for _ in range(400):
        r = [rng.choice("ab") for _ in range(rng.randint(0, 9))]
        h = [rng.choice("abc") for _ in range(rng.randint(0, 9))]
        got = align_counts(r, h)
        assert (got.sub, got.ins, got.dele) == reference_counts(r, h), (r, h)


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_against_jiwer(mode: str) -> None:
    jiwer = pytest.importorskip("jiwer")
    refs, hyps = random_pairs(50, seed=11)
    # Hand jiwer the strings already normalized, so only the edit distance is being compared.
    norm_refs = [normalize(r, mode) for r in refs]
    norm_hyps = [normalize(h, mode) for h in hyps]
    assert all(norm_refs)  # jiwer rejects empty references

    ours = wer(refs, hyps, mode)
    theirs = jiwer.process_words(norm_refs, norm_hyps)
    assert ours.rate == pytest.approx(theirs.wer)
    assert ours.errors == theirs.substitutions + theirs.insertions + theirs.deletions
    assert ours.ref_len == theirs.hits + theirs.substitutions + theirs.deletions
    assert ours.errors > 0  # the random edits must actually exercise the alignment

    ours_c = cer(refs, hyps, mode)
    assert ours_c.rate == pytest.approx(jiwer.cer(norm_refs, norm_hyps))

    for r, h, nr, nh in zip(refs, hyps, norm_refs, norm_hyps):
        assert utterance_errors(r, h, mode).rate == pytest.approx(jiwer.wer(nr, nh))


# --- cost and isolation ----------------------------------------------------------------------------------
def test_speed_thousands_of_utterances() -> None:
    refs, hyps = random_pairs(3000, seed=5)
    start = time.perf_counter()
    wer(refs, hyps)
    cer(refs, hyps)
    elapsed = time.perf_counter() - start
    # Typically well under a second; the bound only catches an accidental quadratic-in-corpus blow-up.
    assert elapsed < 15, elapsed


def test_import_is_light() -> None:
    code = "import sys, common.quality.metrics; print(sorted(m for m in ('torch', 'nemo', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
