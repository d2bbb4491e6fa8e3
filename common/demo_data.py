"""A small synthetic Russian speech set for the embedded demo, built offline with espeak-ng.

The set is split into two slices so that the demo can show LoRA adaptation end to end:

* ``base``: male espeak voices at ordinary speed, clean audio. A tiny model is first trained on it; its
  validation manifest later serves as the regression set ("did adaptation break what the model knew?").
* ``adapt``: female voices, faster speech, white noise. The LoRA adapter is trained on this slice.

Sentences are split once into train and validation texts, so no validation text is ever heard in training
(in either slice). Everything is deterministic given `DemoSpec`, and the result is cached under the output
folder: a stamp (`demo.json`) records the spec, and a matching stamp means nothing is synthesized again.

Run ``python -m common.demo_data --out DIR`` to build a set by hand.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from common.atomic import atomic_path, write_text
from common.errors import UserError

# Bump when the synthesis or layout changes in a way that makes old caches wrong.
FORMAT_VERSION = 2

ESPEAK = "espeak-ng"
STAMP_NAME = "demo.json"
CORPUS_NAME = "corpus.txt"
MANIFEST_NAMES = ("base_train", "base_val", "adapt_train", "adapt_val")
PEAK = 0.9  # peak level after normalisation; leaves headroom so 16-bit PCM never clips

# ---------------------------------------------------------------------------------------------------------
# Sentence generator
# ---------------------------------------------------------------------------------------------------------
# Word lists carry the forms needed for agreement, so templates never inflect anything themselves.
# Genders: "m", "f", "n", "pl". Only inanimate objects (and feminine animate ones, whose accusative is
# regular) are used as direct objects, so an object's accusative equals its nominative except in the feminine.

# Subjects: (nominative, gender).
_SUBJECTS: tuple[tuple[str, str], ...] = (
    ("мальчик", "m"), ("учитель", "m"), ("врач", "m"), ("сосед", "m"), ("дедушка", "m"), ("папа", "m"),
    ("брат", "m"), ("друг", "m"), ("инженер", "m"), ("водитель", "m"), ("студент", "m"), ("художник", "m"),
    ("повар", "m"), ("почтальон", "m"), ("рыбак", "m"),
    ("девочка", "f"), ("мама", "f"), ("бабушка", "f"), ("сестра", "f"), ("подруга", "f"),
    ("учительница", "f"), ("студентка", "f"), ("соседка", "f"), ("медсестра", "f"), ("актриса", "f"),
    ("дети", "pl"), ("студенты", "pl"), ("соседи", "pl"), ("родители", "pl"), ("друзья", "pl"),
    ("туристы", "pl"), ("рабочие", "pl"), ("школьники", "pl"),
)

# Adjectives: (masc, fem nominative, fem accusative, neuter, plural).
_Adj = tuple[str, str, str, str, str]
_SUBJECT_ADJS: tuple[_Adj, ...] = (
    ("старый", "старая", "старую", "старое", "старые"),
    ("молодой", "молодая", "молодую", "молодое", "молодые"),
    ("весёлый", "весёлая", "весёлую", "весёлое", "весёлые"),
    ("добрый", "добрая", "добрую", "доброе", "добрые"),
    ("усталый", "усталая", "усталую", "усталое", "усталые"),
    ("внимательный", "внимательная", "внимательную", "внимательное", "внимательные"),
    ("наш", "наша", "нашу", "наше", "наши"),
    ("мой", "моя", "мою", "моё", "мои"),
)
_OBJECT_ADJS: dict[str, tuple[_Adj, ...]] = {
    "text": (
        ("интересный", "интересная", "интересную", "интересное", "интересные"),
        ("новый", "новая", "новую", "новое", "новые"),
        ("длинный", "длинная", "длинную", "длинное", "длинные"),
        ("короткий", "короткая", "короткую", "короткое", "короткие"),
    ),
    "food": (
        ("вкусный", "вкусная", "вкусную", "вкусное", "вкусные"),
        ("свежий", "свежая", "свежую", "свежее", "свежие"),
        ("горячий", "горячая", "горячую", "горячее", "горячие"),
    ),
    "drink": (
        ("горячий", "горячая", "горячую", "горячее", "горячие"),
        ("холодный", "холодная", "холодную", "холодное", "холодные"),
        ("сладкий", "сладкая", "сладкую", "сладкое", "сладкие"),
    ),
    "thing": (
        ("новый", "новая", "новую", "новое", "новые"),
        ("старый", "старая", "старую", "старое", "старые"),
        ("большой", "большая", "большую", "большое", "большие"),
        ("красивый", "красивая", "красивую", "красивое", "красивые"),
        ("белый", "белая", "белую", "белое", "белые"),
        ("синий", "синяя", "синюю", "синее", "синие"),
    ),
    "nature": (
        ("красивый", "красивая", "красивую", "красивое", "красивые"),
        ("тихий", "тихая", "тихую", "тихое", "тихие"),
        ("далёкий", "далёкая", "далёкую", "далёкое", "далёкие"),
    ),
    "sound": (
        ("весёлый", "весёлая", "весёлую", "весёлое", "весёлые"),
        ("громкий", "громкая", "громкую", "громкое", "громкие"),
        ("новый", "новая", "новую", "новое", "новые"),
    ),
}

# Objects: name -> (nominative, accusative, gender, adjective category).
_OBJECTS: dict[str, tuple[str, str, str, str]] = {
    "книга": ("книга", "книгу", "f", "text"), "газета": ("газета", "газету", "f", "text"),
    "письмо": ("письмо", "письмо", "n", "text"), "журнал": ("журнал", "журнал", "m", "text"),
    "статья": ("статья", "статью", "f", "text"), "сказка": ("сказка", "сказку", "f", "text"),
    "отчёт": ("отчёт", "отчёт", "m", "text"), "записка": ("записка", "записку", "f", "text"),
    "чай": ("чай", "чай", "m", "drink"), "вода": ("вода", "воду", "f", "drink"),
    "молоко": ("молоко", "молоко", "n", "drink"), "сок": ("сок", "сок", "m", "drink"),
    "кофе": ("кофе", "кофе", "m", "drink"),
    "хлеб": ("хлеб", "хлеб", "m", "food"), "суп": ("суп", "суп", "m", "food"),
    "каша": ("каша", "кашу", "f", "food"), "яблоко": ("яблоко", "яблоко", "n", "food"),
    "рыба": ("рыба", "рыбу", "f", "food"), "пирог": ("пирог", "пирог", "m", "food"),
    "ужин": ("ужин", "ужин", "m", "food"), "обед": ("обед", "обед", "m", "food"),
    "завтрак": ("завтрак", "завтрак", "m", "food"), "яблоки": ("яблоки", "яблоки", "pl", "food"),
    "билет": ("билет", "билет", "m", "thing"), "цветы": ("цветы", "цветы", "pl", "thing"),
    "дом": ("дом", "дом", "m", "thing"), "мост": ("мост", "мост", "m", "thing"),
    "школа": ("школа", "школу", "f", "thing"), "сарай": ("сарай", "сарай", "m", "thing"),
    "забор": ("забор", "забор", "m", "thing"), "ключи": ("ключи", "ключи", "pl", "thing"),
    "телефон": ("телефон", "телефон", "m", "thing"), "сумка": ("сумка", "сумку", "f", "thing"),
    "посуда": ("посуда", "посуду", "f", "thing"), "окно": ("окно", "окно", "n", "thing"),
    "машина": ("машина", "машину", "f", "thing"), "пол": ("пол", "пол", "m", "thing"),
    "чашка": ("чашка", "чашку", "f", "thing"), "дверь": ("дверь", "дверь", "f", "thing"),
    "магазин": ("магазин", "магазин", "m", "thing"), "картина": ("картина", "картину", "f", "thing"),
    "велосипед": ("велосипед", "велосипед", "m", "thing"), "часы": ("часы", "часы", "pl", "thing"),
    "крыша": ("крыша", "крышу", "f", "thing"), "зонт": ("зонт", "зонт", "m", "thing"),
    "корзина": ("корзина", "корзину", "f", "thing"), "кошка": ("кошка", "кошку", "f", "thing"),
    "поезд": ("поезд", "поезд", "m", "thing"), "автобус": ("автобус", "автобус", "m", "thing"),
    "дорога": ("дорога", "дорогу", "f", "nature"), "море": ("море", "море", "n", "nature"),
    "лес": ("лес", "лес", "m", "nature"), "река": ("река", "реку", "f", "nature"),
    "город": ("город", "город", "m", "nature"), "птица": ("птица", "птицу", "f", "nature"),
    "озеро": ("озеро", "озеро", "n", "nature"), "небо": ("небо", "небо", "n", "nature"),
    "музыка": ("музыка", "музыку", "f", "sound"), "радио": ("радио", "радио", "n", "sound"),
    "песня": ("песня", "песню", "f", "sound"), "лекция": ("лекция", "лекцию", "f", "sound"),
}

# Verbs: (infinitive, present 3sg, present 3pl, past masc, past fem, past plural), then their objects.
_Verb = tuple[str, str, str, str, str, str]
_TRANSITIVE: tuple[tuple[_Verb, tuple[str, ...]], ...] = (
    (("читать", "читает", "читают", "читал", "читала", "читали"),
     ("книга", "газета", "письмо", "журнал", "статья", "сказка")),
    (("писать", "пишет", "пишут", "писал", "писала", "писали"),
     ("письмо", "статья", "отчёт", "записка", "сказка")),
    (("пить", "пьёт", "пьют", "пил", "пила", "пили"), ("чай", "вода", "молоко", "сок", "кофе")),
    (("есть", "ест", "едят", "ел", "ела", "ели"), ("хлеб", "суп", "каша", "яблоко", "рыба", "пирог")),
    (("покупать", "покупает", "покупают", "покупал", "покупала", "покупали"),
     ("хлеб", "молоко", "билет", "цветы", "газета", "яблоки", "рыба")),
    (("готовить", "готовит", "готовят", "готовил", "готовила", "готовили"),
     ("суп", "каша", "ужин", "обед", "завтрак", "пирог", "рыба")),
    (("строить", "строит", "строят", "строил", "строила", "строили"), ("дом", "мост", "школа", "сарай", "забор")),
    (("искать", "ищет", "ищут", "искал", "искала", "искали"),
     ("ключи", "дорога", "телефон", "сумка", "кошка", "книга", "зонт")),
    (("мыть", "моет", "моют", "мыл", "мыла", "мыли"), ("посуда", "окно", "машина", "пол", "чашка")),
    (("слушать", "слушает", "слушают", "слушал", "слушала", "слушали"), ("музыка", "радио", "песня", "лекция")),
    (("открывать", "открывает", "открывают", "открывал", "открывала", "открывали"),
     ("дверь", "окно", "магазин", "книга", "сумка")),
    (("рисовать", "рисует", "рисуют", "рисовал", "рисовала", "рисовали"),
     ("дом", "море", "кошка", "цветы", "картина", "лес", "река", "небо")),
    (("видеть", "видит", "видят", "видел", "видела", "видели"),
     ("дом", "море", "река", "лес", "машина", "поезд", "город", "птица", "озеро")),
    (("ждать", "ждёт", "ждут", "ждал", "ждала", "ждали"), ("поезд", "автобус", "письмо", "ужин")),
    (("любить", "любит", "любят", "любил", "любила", "любили"), ("музыка", "море", "лес", "чай", "кофе", "цветы")),
    (("чинить", "чинит", "чинят", "чинил", "чинила", "чинили"),
     ("машина", "велосипед", "часы", "забор", "крыша", "телефон")),
    (("нести", "несёт", "несут", "нёс", "несла", "несли"), ("сумка", "цветы", "книга", "корзина", "вода")),
    (("брать", "берёт", "берут", "брал", "брала", "брали"), ("книга", "зонт", "билет", "сумка", "ключи")),
)
_INTRANSITIVE: tuple[_Verb, ...] = (
    ("гулять", "гуляет", "гуляют", "гулял", "гуляла", "гуляли"),
    ("работать", "работает", "работают", "работал", "работала", "работали"),
    ("отдыхать", "отдыхает", "отдыхают", "отдыхал", "отдыхала", "отдыхали"),
    ("спать", "спит", "спят", "спал", "спала", "спали"),
    ("петь", "поёт", "поют", "пел", "пела", "пели"),
    ("играть", "играет", "играют", "играл", "играла", "играли"),
    ("сидеть", "сидит", "сидят", "сидел", "сидела", "сидели"),
    ("жить", "живёт", "живут", "жил", "жила", "жили"),
    ("танцевать", "танцует", "танцуют", "танцевал", "танцевала", "танцевали"),
    ("учиться", "учится", "учатся", "учился", "училась", "учились"),
    ("смеяться", "смеётся", "смеются", "смеялся", "смеялась", "смеялись"),
    ("обедать", "обедает", "обедают", "обедал", "обедала", "обедали"),
    ("ждать", "ждёт", "ждут", "ждал", "ждала", "ждали"),
)
_PLACES = (
    "в парке", "дома", "на кухне", "в школе", "в городе", "на работе", "в библиотеке", "у окна", "в саду",
    "на улице", "в деревне", "на вокзале", "в магазине", "на море", "в лесу", "у реки", "на даче", "в комнате",
)
_TIMES_PRESENT = (
    "сегодня", "сейчас", "утром", "вечером", "днём", "ночью", "летом", "зимой", "весной", "осенью", "часто",
    "иногда", "обычно", "каждый день", "по субботам",
)
_TIMES_PAST = ("вчера", "утром", "вечером", "днём", "ночью", "летом", "зимой", "недавно", "давно", "в субботу")
_TIMES_FUTURE = ("завтра", "скоро", "вечером", "утром", "летом", "в субботу", "через неделю", "потом")
_MANNER = (
    "быстро", "медленно", "тихо", "внимательно", "спокойно", "осторожно", "весело", "охотно", "долго",
    "снова", "всегда", "опять", "уже",
)
_MANNER_INTRANSITIVE = ("долго", "весело", "спокойно", "снова", "тихо", "опять")
_STATES = ("холодно", "тепло", "жарко", "тихо", "шумно", "весело", "светло", "темно", "уютно", "скучно", "хорошо")
_DEGREE = ("очень", "довольно", "совсем", "так")
_ADJ_DEGREE = ("очень", "довольно", "совсем", "слишком")  # "так" needs the short form, so it is left out
_THIS = {"m": "этот", "f": "эта", "n": "это", "pl": "эти"}

_GENDER_INDEX_NOM = {"m": 0, "f": 1, "n": 3, "pl": 4}
_GENDER_INDEX_ACC = {"m": 0, "f": 2, "n": 3, "pl": 4}


def _present(verb: _Verb, gender: str) -> str:
    return verb[2] if gender == "pl" else verb[1]


def _past(verb: _Verb, gender: str) -> str:
    return {"m": verb[3], "f": verb[4], "pl": verb[5]}[gender]


def _maybe(rng: random.Random, p: float, words: Sequence[str]) -> str:
    return rng.choice(words) if rng.random() < p else ""


def _subject_phrase(rng: random.Random) -> tuple[str, str]:
    noun, gender = rng.choice(_SUBJECTS)
    if rng.random() < 0.35:
        noun = f"{rng.choice(_SUBJECT_ADJS)[_GENDER_INDEX_NOM[gender]]} {noun}"
    return noun, gender


def _object_phrase(rng: random.Random, name: str) -> str:
    _, acc, gender, category = _OBJECTS[name]
    if rng.random() < 0.4:
        return f"{rng.choice(_OBJECT_ADJS[category])[_GENDER_INDEX_ACC[gender]]} {acc}"
    return acc


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _transitive(rng: random.Random) -> tuple[str, bool]:
    subject, gender = _subject_phrase(rng)
    verb, objects = rng.choice(_TRANSITIVE)
    obj = _object_phrase(rng, rng.choice(objects))
    tense = rng.random()
    if tense < 0.5:
        time_ = _maybe(rng, 0.4, _TIMES_PRESENT)
        return _join(time_, subject, _maybe(rng, 0.3, _MANNER), _present(verb, gender), obj,
                     "" if time_ else _maybe(rng, 0.3, _PLACES)), False
    if tense < 0.8:
        return _join(_maybe(rng, 0.5, _TIMES_PAST), subject, _past(verb, gender), obj,
                     _maybe(rng, 0.3, _PLACES)), False
    aux = "будут" if gender == "pl" else "будет"
    return _join(rng.choice(_TIMES_FUTURE), subject, aux, verb[0], obj), False


def _intransitive(rng: random.Random) -> tuple[str, bool]:
    subject, gender = _subject_phrase(rng)
    verb = rng.choice(_INTRANSITIVE)
    place = rng.choice(_PLACES)
    if rng.random() < 0.6:
        neg = "не" if rng.random() < 0.15 else ""
        return _join(_maybe(rng, 0.5, _TIMES_PRESENT), subject, neg, _present(verb, gender), place), False
    return _join(_maybe(rng, 0.6, _TIMES_PAST), subject, _maybe(rng, 0.3, _MANNER_INTRANSITIVE),
                 _past(verb, gender), place), False


def _state(rng: random.Random) -> tuple[str, bool]:
    degree = _maybe(rng, 0.7, _DEGREE)
    state = rng.choice(_STATES)
    if rng.random() < 0.5:
        return _join(rng.choice(_TIMES_PRESENT), rng.choice(_PLACES), degree, state), False
    return _join(rng.choice(_TIMES_PAST), rng.choice(_PLACES), "было", degree, state), False


def _description(rng: random.Random) -> tuple[str, bool]:
    nom, _, gender, category = _OBJECTS[rng.choice(sorted(_OBJECTS))]
    adj = rng.choice(_OBJECT_ADJS[category])[_GENDER_INDEX_NOM[gender]]
    return _join(_THIS[gender], nom, _maybe(rng, 0.7, _ADJ_DEGREE), adj), False


def _question(rng: random.Random) -> tuple[str, bool]:
    kind = rng.randrange(4)
    if kind == 0:  # Где сейчас гуляют дети?
        subject, gender = _subject_phrase(rng)
        verb = rng.choice(_INTRANSITIVE)
        return _join(rng.choice(("где", "когда")), _maybe(rng, 0.4, ("сейчас", "обычно", "теперь")),
                     _present(verb, gender), subject), True
    if kind == 1:  # Почему бабушка не спит?
        subject, gender = _subject_phrase(rng)
        verb = rng.choice(_INTRANSITIVE)
        return _join("почему", subject, "не", _present(verb, gender), _maybe(rng, 0.4, _TIMES_PRESENT)), True
    if kind == 2:  # Кто моет посуду?  ("кто" agrees as masculine singular)
        verb, objects = rng.choice(_TRANSITIVE)
        form = _present(verb, "m") if rng.random() < 0.5 else _past(verb, "m")
        return _join("кто", form, _object_phrase(rng, rng.choice(objects)), _maybe(rng, 0.3, _PLACES)), True
    # Что мама готовит вечером?
    subject, gender = _subject_phrase(rng)
    verb, _ = rng.choice(_TRANSITIVE)
    return _join("что", subject, _present(verb, gender), _maybe(rng, 0.6, _TIMES_PRESENT)), True


_TEMPLATES: tuple[tuple[Callable[[random.Random], tuple[str, bool]], float], ...] = (
    (_transitive, 0.45), (_intransitive, 0.25), (_state, 0.08), (_description, 0.1), (_question, 0.12),
)
MIN_WORDS, MAX_WORDS = 3, 7


def generate_sentences(n: int = 400, seed: int = 0) -> list[str]:
    """`n` distinct Russian sentences (3 to 7 words, capitalised, punctuated), deterministic in `seed`."""
    rng = random.Random(seed)
    funcs = [f for f, _ in _TEMPLATES]
    weights = [w for _, w in _TEMPLATES]
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:  # the templates cover far more than this; guards a bad request
            raise ValueError(f"could only generate {len(out)} distinct sentences, {n} requested")
        body, question = rng.choices(funcs, weights)[0](rng)
        if not MIN_WORDS <= len(body.split()) <= MAX_WORDS:
            continue
        text = body[0].upper() + body[1:] + ("?" if question else ".")
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


ENGLISH_SENTENCES: tuple[str, ...] = (
    "The boy reads a new book.", "My sister drinks hot tea in the morning.", "We walk in the park every day.",
    "The teacher writes a long letter.", "Where do the children play?", "The old man sleeps at home.",
    "Mother cooks soup in the kitchen.", "The students listen to the lecture.", "It is very cold outside today.",
    "My friend buys fresh bread.", "The workers build a small bridge.", "Who washed the dishes?",
    "The girl draws a beautiful house.", "Father repairs the car in the garage.", "This river is very quiet.",
    "The tourists wait for the train.", "Grandmother tells a short story.", "The doctor works in the city.",
    "Why is the baby not sleeping?", "Our neighbours live near the lake.", "The cat sits by the window.",
    "I like warm summer evenings.", "The driver opens the door.", "They will read the newspaper tomorrow.",
    "The artist paints the blue sky.", "She carries a heavy basket.", "The fisherman sees a big bird.",
    "It was very quiet in the forest.", "The kids sing a happy song.", "He is looking for his keys.",
    "The shop opens at nine.", "My brother plays in the garden.", "The parents are resting at the cottage.",
    "What is the cook making for dinner?", "The nurse drinks cold water.", "These flowers are very pretty.",
    "The train arrives in the evening.", "A young engineer repairs the roof.", "We often listen to the radio.",
    "The school is very big.", "Yesterday the students danced at the station.", "The sun is shining brightly.",
    "Please close the window.", "The milk is fresh and sweet.", "The postman brings a letter.",
    "Everyone laughed at the joke.", "The bus is late again.", "Snow falls slowly in winter.",
    "The library is quiet and warm.", "My friends will come on Saturday.", "The road goes through the forest.",
    "She reads the report carefully.", "The children eat apples in the garden.", "It is dark at night.",
    "The old clock stopped working.", "He takes an umbrella every day.", "The sea is calm this morning.",
    "We are learning a new language.", "The birds fly over the city.", "Thank you for the tasty dinner.",
)


# ---------------------------------------------------------------------------------------------------------
# Spec and slices
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSpec:
    """What to build. Any change to a field invalidates the cache."""

    # Thousands of distinct texts: with a few hundred, a small decoder learns the sentences by heart and
    # outputs one of them whatever it hears; with this many it has to listen.
    n_sentences: int = 2600
    seed: int = 1234
    val_sentences: int = 100  # held out from training in both slices
    adapt_train_sentences: int | None = 800  # train texts the adapt slice reads (None: all of them)
    sample_rate: int = 16000
    base_voices: tuple[str, ...] = ("m1", "m3", "m7")
    base_wpm: tuple[int, int] = (150, 175)
    base_train_copies: int = 1  # base voices per train text: more copies, more clips of the same texts
    base_snr_db: float | None = None
    adapt_voices: tuple[str, ...] = ("f2", "f4")
    adapt_wpm: tuple[int, int] = (200, 220)
    adapt_snr_db: float | None = 15.0

    def __post_init__(self) -> None:
        if self.n_sentences < 2:
            raise ValueError("n_sentences must be at least 2 (one train and one val text)")
        if not 1 <= self.val_sentences < self.n_sentences:
            raise ValueError("val_sentences must lie between 1 and n_sentences - 1")
        if self.adapt_train_sentences is not None and self.adapt_train_sentences < 1:
            raise ValueError("adapt_train_sentences must be at least 1 (or None for all train texts)")
        if not self.base_voices or not self.adapt_voices:
            raise ValueError("base_voices and adapt_voices must not be empty")
        if set(self.base_voices) & set(self.adapt_voices):
            raise ValueError("base_voices and adapt_voices must be disjoint")
        if not 1 <= self.base_train_copies <= len(self.base_voices):
            raise ValueError("base_train_copies must lie between 1 and len(base_voices)")
        for name in ("base_wpm", "adapt_wpm"):
            lo, hi = getattr(self, name)
            if not 80 <= lo <= hi <= 450:
                raise ValueError(f"{name} must be (low, high) words per minute within 80..450")

    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON values (tuples become lists), the form stored in the stamp."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class Utterance:
    uid: str
    slice: str  # "base" or "adapt"
    split: str  # "train" or "val"
    text: str
    voice: str
    wpm: int
    snr_db: float | None

    @property
    def manifest(self) -> str:
        return f"{self.slice}_{self.split}"


@dataclass(frozen=True)
class DemoSet:
    """Where a built demo set lies, plus its stats (clips and hours per manifest)."""

    root: Path
    base_train: Path
    base_val: Path
    adapt_train: Path
    adapt_val: Path
    corpus: Path
    stats: dict


def split_texts(spec: DemoSpec) -> tuple[list[str], list[str]]:
    """Train and val texts: one split shared by both slices, so val texts are never heard in training."""
    sentences = generate_sentences(spec.n_sentences, spec.seed)
    return sentences[spec.val_sentences:], sentences[:spec.val_sentences]


def tokenizer_corpus(spec: DemoSpec = DemoSpec()) -> list[str]:
    """Text to train the tokenizer on: every Russian sentence of the spec, then the English ones."""
    return generate_sentences(spec.n_sentences, spec.seed) + list(ENGLISH_SENTENCES)


def _seed_for(spec: DemoSpec, uid: str) -> int:
    # hashlib, not hash(): str hashes are salted per process and would break determinism.
    return int.from_bytes(hashlib.sha256(f"{spec.seed}:{uid}".encode()).digest()[:8], "little")


def _wpm_for(spec: DemoSpec, uid: str, wpm_range: tuple[int, int]) -> int:
    return random.Random(_seed_for(spec, uid)).randint(*wpm_range)


def plan_utterances(spec: DemoSpec) -> list[Utterance]:
    """Every clip to synthesize, with its voice, speed and noise level."""
    train, val = split_texts(spec)
    out: list[Utterance] = []

    def add(slice_: str, split: str, i: int, text: str, voice: str) -> None:
        uid = f"{slice_}_{split}_{i:04d}_{voice}"
        wpm_range = spec.base_wpm if slice_ == "base" else spec.adapt_wpm
        snr = spec.base_snr_db if slice_ == "base" else spec.adapt_snr_db
        out.append(Utterance(uid, slice_, split, text, voice, _wpm_for(spec, uid, wpm_range), snr))

    bv, av = spec.base_voices, spec.adapt_voices
    # Rotating voice assignment: each voice gets an even share of texts, and neighbouring copies differ.
    for i, text in enumerate(train):
        for k in range(spec.base_train_copies):
            add("base", "train", i, text, bv[(i + k) % len(bv)])
    for i, text in enumerate(val):
        add("base", "val", i, text, bv[i % len(bv)])
    for i, text in enumerate(train[: spec.adapt_train_sentences]):
        add("adapt", "train", i, text, av[i % len(av)])
    for i, text in enumerate(val):
        add("adapt", "val", i, text, av[i % len(av)])
    return out


# ---------------------------------------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------------------------------------
_INSTALL_HINT = (
    "Install it: on Debian/Ubuntu run `apt-get install espeak-ng`; on Windows install the espeak-ng MSI from "
    "https://github.com/espeak-ng/espeak-ng/releases and make sure espeak-ng is on PATH."
)


def find_espeak() -> str:
    """Path of the espeak-ng executable, or a `UserError` saying how to install it."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise UserError(f"The demo data set is synthesized with espeak-ng, which is not on PATH. {_INSTALL_HINT}")
    return path


def available_variants(espeak: str) -> set[str]:
    """Voice variant names espeak-ng knows (the `!v/<name>` file column of `--voices=variant`)."""
    listing = subprocess.run([espeak, "--voices=variant"], capture_output=True, text=True, check=False).stdout
    return {m.group(1) for m in re.finditer(r"!v/(\S+(?: \S+)*)", listing)}


def check_variants(espeak: str, spec: DemoSpec) -> None:
    # espeak-ng silently falls back to the default voice on an unknown variant, which would quietly make
    # the base and adapt slices sound alike, so unknown names are refused up front.
    known = available_variants(espeak)
    unknown = [v for v in (*spec.base_voices, *spec.adapt_voices) if v not in known]
    if unknown:
        raise UserError(
            f"espeak-ng has no voice variant named {', '.join(unknown)}. "
            f"Pick names listed by `espeak-ng --voices=variant` (the part after `!v/`, e.g. m1, f2)."
        )


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at `snr_db` relative to the mean power of the whole clip."""
    power = float(np.mean(audio**2))
    if power <= 0.0:
        return audio
    noise = rng.standard_normal(audio.shape) * math.sqrt(power / 10 ** (snr_db / 10))
    return audio + noise


def peak_normalise(audio: np.ndarray, peak: float = PEAK) -> np.ndarray:
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio if top <= 0.0 else audio * (peak / top)


def synthesize(espeak: str, utt: Utterance, spec: DemoSpec, out_path: Path, tmp_dir: Path) -> float:
    """Render one clip to `out_path` (written atomically) and return its duration in seconds."""
    raw = tmp_dir / f"{utt.uid}.wav"
    cmd = [espeak, "-v", f"ru+{utt.voice}", "-s", str(utt.wpm), "-w", str(raw), utt.text]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not raw.exists():
        raise UserError(
            f"espeak-ng failed on {utt.uid} (exit {proc.returncode}): {proc.stderr.strip() or 'no output file'}. "
            f"Check that the Russian voice works: espeak-ng -v ru+{utt.voice} \"Привет\""
        )
    audio, sr = sf.read(raw, dtype="float64", always_2d=True)
    raw.unlink()
    audio = audio.mean(axis=1)
    if sr != spec.sample_rate:
        g = math.gcd(spec.sample_rate, sr)
        audio = resample_poly(audio, spec.sample_rate // g, sr // g)
    if utt.snr_db is not None:
        audio = add_noise(audio, utt.snr_db, np.random.default_rng(_seed_for(spec, utt.uid)))
    audio = peak_normalise(audio)
    with atomic_path(out_path) as tmp:
        # The temp name ends in ".tmp", so the container format must be named explicitly.
        sf.write(tmp, audio, spec.sample_rate, subtype="PCM_16", format="WAV")
    return round(len(audio) / spec.sample_rate, 3)


def _default_workers() -> int:
    return max(2, min(4, os.cpu_count() or 2))


def synthesize_all(
    espeak: str, utts: Sequence[Utterance], spec: DemoSpec, root: Path, workers: int | None = None
) -> dict[str, float]:
    """Render every clip in parallel (espeak-ng runs as a subprocess, so threads suffice); uid -> seconds."""
    durations: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="espeak_") as tmp, concurrent.futures.ThreadPoolExecutor(
        max_workers=workers or _default_workers()
    ) as pool:
        futures = {
            pool.submit(synthesize, espeak, u, spec, wav_path(root, u), Path(tmp)): u.uid for u in utts
        }
        with tqdm(total=len(futures), desc="espeak-ng", unit="clip", disable=None) as bar:
            for fut in concurrent.futures.as_completed(futures):
                durations[futures[fut]] = fut.result()
                bar.update(1)
    return durations


# ---------------------------------------------------------------------------------------------------------
# Building and caching
# ---------------------------------------------------------------------------------------------------------
def wav_path(root: Path, utt: Utterance) -> Path:
    return (root / "wav" / utt.slice / f"{utt.uid}.wav").resolve()


def _paths(root: Path, stats: dict) -> DemoSet:
    return DemoSet(
        root=root,
        base_train=root / "base_train.jsonl",
        base_val=root / "base_val.jsonl",
        adapt_train=root / "adapt_train.jsonl",
        adapt_val=root / "adapt_val.jsonl",
        corpus=root / CORPUS_NAME,
        stats=stats,
    )


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _cached(root: Path, spec: DemoSpec) -> DemoSet | None:
    stamp = _read_stamp(root)
    if not stamp or stamp.get("version") != FORMAT_VERSION or stamp.get("spec") != spec.to_json():
        return None
    demo = _paths(root, stamp.get("stats", {}))
    files = (demo.base_train, demo.base_val, demo.adapt_train, demo.adapt_val, demo.corpus)
    return demo if all(p.exists() for p in files) else None


def _manifest_line(root: Path, utt: Utterance, duration: float) -> str:
    entry = {
        "audio_filepath": str(wav_path(root, utt)),
        "duration": duration,
        "text": utt.text,
        "source_lang": "ru",
        "target_lang": "ru",
        "pnc": "yes",
    }
    return json.dumps(entry, ensure_ascii=False)


def _stats(utts: Sequence[Utterance], durations: dict[str, float]) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for name in MANIFEST_NAMES:
        d = [durations[u.uid] for u in utts if u.manifest == name]
        total = sum(d)
        stats[name] = {
            "clips": len(d),
            "seconds": round(total, 1),
            "hours": round(total / 3600, 4),
            "min_s": min(d, default=0.0),
            "mean_s": round(total / len(d), 3) if d else 0.0,
            "max_s": max(d, default=0.0),
        }
    return stats


def _prune_stale_wavs(root: Path, keep: set[Path]) -> None:
    # A rebuild with another spec leaves clips nobody references; remove only our own *.wav files.
    for slice_ in ("base", "adapt"):
        folder = root / "wav" / slice_
        if folder.is_dir():
            for f in folder.glob("*.wav"):
                if f.resolve() not in keep:
                    f.unlink()


def build_demo_set(
    root: Path, spec: DemoSpec = DemoSpec(), *, force: bool = False, workers: int | None = None
) -> DemoSet:
    """Build (or reuse, when the stamp matches `spec`) the demo set under `root`."""
    root = Path(root).resolve()
    if not force and (cached := _cached(root, spec)) is not None:
        return cached
    espeak = find_espeak()
    check_variants(espeak, spec)
    # The stamp goes first and comes back last: a build that dies midway can never look complete.
    (root / STAMP_NAME).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    utts = plan_utterances(spec)
    durations = synthesize_all(espeak, utts, spec, root, workers)
    for name in MANIFEST_NAMES:
        lines = [_manifest_line(root, u, durations[u.uid]) for u in utts if u.manifest == name]
        write_text(root / f"{name}.jsonl", "".join(line + "\n" for line in lines))
    write_text(root / CORPUS_NAME, "".join(s + "\n" for s in tokenizer_corpus(spec)))
    _prune_stale_wavs(root, {wav_path(root, u) for u in utts})

    stats: dict[str, Any] = {"manifests": _stats(utts, durations)}
    stats["total_clips"] = len(utts)
    stats["total_hours"] = round(sum(durations.values()) / 3600, 4)
    stats["build_seconds"] = round(time.monotonic() - start, 1)
    stamp = {"version": FORMAT_VERSION, "spec": spec.to_json(), "stats": stats}
    write_text(root / STAMP_NAME, json.dumps(stamp, ensure_ascii=False, indent=2) + "\n")
    return _paths(root, stats)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the synthetic Russian demo speech set with espeak-ng.")
    parser.add_argument("--out", type=Path, required=True, help="output folder (manifests, wav/, corpus.txt)")
    parser.add_argument("--n_sentences", type=int, default=DemoSpec.n_sentences)
    parser.add_argument("--val_sentences", type=int, default=None,
                        help=f"held-out texts (default: {DemoSpec.val_sentences}, or a fifth of a smaller set)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cached set matches")
    parser.add_argument("--workers", type=int, default=None, help="parallel espeak-ng processes (default 2-4)")
    args = parser.parse_args(argv)
    val = args.val_sentences or min(DemoSpec.val_sentences, max(1, args.n_sentences // 5))
    try:
        demo = build_demo_set(args.out, DemoSpec(n_sentences=args.n_sentences, val_sentences=val), force=args.force,
                              workers=args.workers)
    except (UserError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"root": str(demo.root), **demo.stats}, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
