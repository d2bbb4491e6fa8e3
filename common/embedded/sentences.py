"""Russian sentences for the embedded demo: a small grammar with agreeing genders and cases, so a tiny model
hears thousands of distinct, well-formed sentences (a few hundred would be learnt by heart)."""
from __future__ import annotations

import random
from typing import Callable, Sequence


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
