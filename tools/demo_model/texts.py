"""Deterministic Hindi text for the synthetic demo corpus.

Three kinds of utterance text, all NFC and restricted to the IndicWav2Vec vocabulary plus the space:

- ``hand``: hand-written everyday sentences (a fixed share is reserved for the test split);
- ``template``: subject / object / verb sentences with gender agreement, times, places and numbers
  written as words;
- ``wordfreq``: phrases built around words from ``wordfreq``'s Hindi list (frame sentences such as
  "X के बारे में बताइए" and plain 3-7-word sequences), for wide phonetic coverage.

Every text of the test split is absent from train and dev (checked, not assumed).
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable

from tools.demo_model.vocab import ALLOWED_CHARS

_SPACES = re.compile(r"\s+")

HAND_SENTENCES: tuple[str, ...] = (
    "आज मौसम बहुत अच्छा है",
    "मुझे एक कप चाय चाहिए",
    "आप कहाँ जा रहे हैं",
    "मेरा घर स्टेशन के पास है",
    "कृपया दरवाज़ा बंद कर दीजिए",
    "बच्चे मैदान में खेल रहे हैं",
    "कल रात बहुत बारिश हुई",
    "यह किताब किसकी है",
    "हम अगले हफ़्ते दिल्ली जाएँगे",
    "उसने मुझे एक चिट्ठी लिखी",
    "बाज़ार में आज बहुत भीड़ है",
    "माँ रसोई में खाना बना रही हैं",
    "क्या आप हिंदी बोलते हैं",
    "ट्रेन दस मिनट देर से आएगी",
    "मैं हर सुबह दौड़ने जाता हूँ",
    "पानी की बोतल मेज़ पर रखी है",
    "डॉक्टर ने आराम करने को कहा",
    "हमें समय पर पहुँचना चाहिए",
    "गाँव में एक पुराना मंदिर है",
    "उसकी आवाज़ बहुत मीठी है",
    "शाम को पार्क में टहलने चलेंगे",
    "मेरे पास ज़्यादा पैसे नहीं हैं",
    "यह सड़क शहर की ओर जाती है",
    "दादी हमें कहानी सुनाती थीं",
    "बिजली चली गई है",
    "फ़ोन की बैटरी ख़त्म हो गई",
    "आपका नाम क्या है",
    "मुझे हिंदी गाने पसंद हैं",
    "खिड़की खोल दो बहुत गर्मी है",
    "किसान खेत में काम कर रहा है",
    "स्कूल की छुट्टी कब होगी",
    "हम सब मिलकर काम करेंगे",
    "उसने परीक्षा में अच्छे अंक पाए",
    "नदी का पानी बहुत ठंडा है",
    "बस अड्डा यहाँ से दूर नहीं है",
    "मैंने आज अख़बार नहीं पढ़ा",
    "चलो सिनेमा देखने चलते हैं",
    "सब्ज़ी वाला रोज़ सुबह आता है",
    "आसमान में बादल छाए हुए हैं",
    "यह कमरा बहुत साफ़ है",
    "मुझे रास्ता नहीं पता",
    "क्या आप मेरी मदद कर सकते हैं",
    "बच्चा दूध पी रहा है",
    "हमारी टीम ने मैच जीत लिया",
    "दुकान नौ बजे खुलती है",
    "पिताजी दफ़्तर गए हैं",
    "मेरी बहन डॉक्टर बनना चाहती है",
    "आज बाज़ार बंद रहेगा",
    "इस साल फ़सल अच्छी हुई है",
    "कृपया धीरे बोलिए",
    "वह रोज़ योग करती है",
    "मुझे नींद आ रही है",
    "पुस्तकालय में शांति रखें",
    "हमने नया घर ख़रीदा है",
    "सूरज पूरब में उगता है",
    "चाय में चीनी कम डालना",
    "गाड़ी धीरे चलाइए",
    "आज मेरा जन्मदिन है",
    "उसे संगीत सीखने का शौक़ है",
    "यह फल बहुत मीठा है",
    "बाहर बहुत ठंड है",
    "मैं कल तुम्हें फ़ोन करूँगा",
    "रेलगाड़ी प्लेटफ़ॉर्म पर खड़ी है",
    "हमें पेड़ लगाने चाहिए",
    "मेरा भाई क्रिकेट खेलता है",
    "खाना बहुत स्वादिष्ट था",
    "अस्पताल यहाँ से पास है",
    "उसने सच बोला",
    "दिवाली पर घर सजाया जाता है",
    "कल छुट्टी का दिन है",
    "वे लोग शादी में गए हैं",
    "इस काम में समय लगेगा",
    "मुझे थोड़ा पानी दीजिए",
    "यह गाँव पहाड़ों के बीच है",
    "बच्चों ने चित्र बनाए",
    "सुबह की हवा ताज़ा होती है",
    "हम हर साल मेला देखने जाते हैं",
    "आपने खाना खाया क्या",
    "उसकी घड़ी बंद हो गई",
    "नमस्ते आप कैसे हैं",
)

_ONES = [
    "शून्य",
    "एक",
    "दो",
    "तीन",
    "चार",
    "पाँच",
    "छह",
    "सात",
    "आठ",
    "नौ",
    "दस",
    "ग्यारह",
    "बारह",
    "तेरह",
    "चौदह",
    "पंद्रह",
    "सोलह",
    "सत्रह",
    "अठारह",
    "उन्नीस",
    "बीस",
]
_TENS = {30: "तीस", 40: "चालीस", 50: "पचास", 60: "साठ", 70: "सत्तर", 80: "अस्सी", 90: "नब्बे"}


def number_words(n: int) -> str:
    """Write 0-20, round tens, and hundreds/thousands made of them as Hindi words (no digits)."""
    if n <= 20:
        return _ONES[n]
    if n in _TENS:
        return _TENS[n]
    for unit, word in ((100_000, "लाख"), (1000, "हज़ार"), (100, "सौ")):
        if n >= unit and n % unit == 0 and (n // unit <= 20 or n // unit in _TENS):
            return f"{number_words(n // unit)} {word}"
        if n > unit and n % unit and (n // unit <= 20 or n // unit in _TENS):
            return f"{number_words(n - n % unit)} {number_words(n % unit)}"
    raise ValueError(f"no word form for {n}")


def random_number(rng: random.Random) -> str:
    """A number in words: small, round tens, or hundreds/thousands with an optional remainder."""
    kind = rng.random()
    if kind < 0.45:
        n = rng.randint(1, 20)
    elif kind < 0.65:
        n = rng.choice(list(_TENS))
    elif kind < 0.85:
        n = rng.randint(1, 9) * 100 + rng.choice([0, 0, rng.randint(1, 20), rng.choice(list(_TENS))])
    else:
        n = rng.choice([1, 2, 3, 5, 10, 20, 50]) * 1000 + rng.choice([0, 100, 500])
    return number_words(n)


def normalize_text(text: str) -> str:
    """NFC, keep only vocabulary characters (others become spaces), collapse spaces."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(c if c in ALLOWED_CHARS else " " for c in text)
    return _SPACES.sub(" ", text).strip()


_SUBJ_M = (
    "राम",
    "मोहन",
    "अमित",
    "मेरा भाई",
    "उसका बेटा",
    "किसान",
    "डॉक्टर",
    "लड़का",
    "दुकानदार",
    "राजा",
    "पिताजी",
    "ड्राइवर",
    "चाचा",
    "सुरेश",
    "मेरा दोस्त",
    "रवि",
)
_SUBJ_F = (
    "सीता",
    "गीता",
    "प्रिया",
    "मेरी बहन",
    "उसकी बेटी",
    "लड़की",
    "माँ",
    "दादी",
    "रानी",
    "नेहा",
    "अनीता",
    "मौसी",
    "मेरी दोस्त",
    "पूजा",
)
_TIMES = (
    "आज",
    "कल",
    "सुबह",
    "शाम को",
    "रात को",
    "अभी",
    "हर दिन",
    "रविवार को",
    "परसों",
    "दोपहर में",
    "सोमवार को",
    "कभी कभी",
    "जल्दी",
)
_PLACES = (
    "घर",
    "बाज़ार",
    "स्कूल",
    "दिल्ली",
    "मुंबई",
    "गाँव",
    "शहर",
    "अस्पताल",
    "दफ़्तर",
    "मंदिर",
    "पार्क",
    "स्टेशन",
    "कोलकाता",
    "जयपुर",
    "लखनऊ",
    "पटना",
    "खेत",
    "मेला",
)
_ADJ = ("लाल", "सुंदर", "साफ़", "गरम", "ख़ास", "अजीब", "पुराना", "छोटा", "बड़ा", "नया", "अच्छा", "सस्ता")
#: verb stem -> objects it takes (None: a place verb).
_VERBS: dict[str, tuple[str, ...]] = {
    "खा": ("खाना", "रोटी", "आम", "चावल", "फल", "मिठाई", "दाल", "समोसा"),
    "पढ़": ("किताब", "अख़बार", "कहानी", "चिट्ठी", "पाठ", "कविता", "उपन्यास"),
    "लिख": ("चिट्ठी", "कहानी", "कविता", "नाम", "जवाब", "लेख", "रिपोर्ट"),
    "देख": ("फ़िल्म", "तस्वीर", "सपना", "मैच", "नाटक", "समाचार", "तारे"),
    "सुन": ("गाना", "कहानी", "ख़बर", "संगीत", "आवाज़", "रेडियो", "भाषण"),
    "बना": ("खाना", "चाय", "घर", "योजना", "नक्शा", "खिलौना", "रंगोली"),
    "ख़रीद": ("सब्ज़ी", "कपड़े", "किताब", "फल", "दवा", "टिकट", "साइकिल", "जूते"),
    "बेच": ("सब्ज़ी", "फल", "दूध", "कपड़े", "अनाज", "मछली"),
    "पी": ("पानी", "चाय", "दूध", "कॉफ़ी", "जूस", "लस्सी"),
    "सीख": ("हिंदी", "गणित", "संगीत", "तैरना", "नाचना", "अंग्रेज़ी", "कंप्यूटर"),
    "गा": ("गाना", "गीत", "भजन", "लोरी"),
    "धो": ("कपड़े", "बर्तन", "हाथ", "गाड़ी"),
    "खेल": ("क्रिकेट", "फ़ुटबॉल", "शतरंज", "कबड्डी", "हॉकी", "कैरम"),
    "भेज": ("चिट्ठी", "पैसे", "संदेश", "पार्सल", "तोहफ़ा"),
    "ला": ("दूध", "सब्ज़ी", "पानी", "किताबें", "मिठाई", "फूल"),
}
_COUNTABLE = (
    "किताबें",
    "रुपये",
    "लोग",
    "कुर्सियाँ",
    "गाड़ियाँ",
    "पेड़",
    "बच्चे",
    "घर",
    "आम",
    "साल",
    "दिन",
    "घंटे",
    "किलोमीटर",
    "कमरे",
    "सवाल",
)


def _verb_form(stem: str, fem: bool, rng: random.Random) -> str:
    """One agreeing verb phrase: habitual present, progressive, future or perfective intent."""
    g = "ी" if fem else "ा"
    vowel_final = stem[-1] in "ाीोे"
    form = rng.randrange(4)
    if form == 0:
        return f"{stem}त{g} है"
    if form == 1:
        return f"{stem} रह{g} है"
    if form == 2:
        return f"{stem}{'एग' if vowel_final else 'ेग'}{g}"
    return f"{stem}ना चाहत{g} है"


def _template_sentence(rng: random.Random) -> str:
    fem = rng.random() < 0.5
    subj = rng.choice(_SUBJ_F if fem else _SUBJ_M)
    time = rng.choice(_TIMES) + " " if rng.random() < 0.5 else ""
    kind = rng.random()
    if kind < 0.2:
        place = rng.choice(_PLACES)
        return f"{time}{subj} {place} {_verb_form('जा', fem, rng)}"
    if kind < 0.35:
        who = rng.choice(("मेरे पास", "उसके पास", "हमारे पास", "कमरे में", "बाज़ार में", "गाँव में", "इस घर में"))
        return f"{who} {random_number(rng)} {rng.choice(_COUNTABLE)} हैं"
    if kind < 0.45:
        clock = rng.choice(_ONES[1:13])
        event = rng.choice(("गाड़ी", "बस", "मीटिंग", "क्लास", "फ़िल्म", "दुकान"))
        verb = rng.choice(("आएगी", "शुरू होगी", "खुलेगी", "चलेगी", "ख़त्म होगी"))
        return f"{time}{event} {clock} बजे {verb}"
    stem = rng.choice(list(_VERBS))
    obj = rng.choice(_VERBS[stem])
    if rng.random() < 0.3:
        obj = f"{rng.choice(_ADJ)} {obj}"
    elif rng.random() < 0.2:
        obj = f"{random_number(rng)} {obj}"
    return f"{time}{subj} {obj} {_verb_form(stem, fem, rng)}"


_FRAMES = (
    "{a} के बारे में बताइए",
    "{a} का मतलब क्या है",
    "मैंने {a} शब्द सुना है",
    "{a} और {b} दोनों ज़रूरी हैं",
    "क्या आपने {a} देखा",
    "उसने {a} कहा था",
    "{a} {b} के साथ आया",
    "यह {a} है या {b}",
    "हमें {a} के लिए {b} चाहिए",
    "{a} पर बात होगी",
    "{a} {b} {c}",
    "अगला शब्द {a} है",
)


class WordList:
    """The top Hindi words of ``wordfreq`` that the vocabulary can spell, in frequency order."""

    def __init__(self, top_n: int = 4000, min_len: int = 2) -> None:
        from wordfreq import top_n_list

        words = []
        for w in top_n_list("hi", top_n):
            w = unicodedata.normalize("NFC", w)
            if len(w) >= min_len and all(c in ALLOWED_CHARS and c != " " for c in w):
                words.append(w)
        self.words = words

    def sample(self, rng: random.Random) -> str:
        """A word, biased towards frequent ones (sqrt-rank sampling)."""
        return self.words[int(len(self.words) * rng.random() ** 1.5)]


def _wordfreq_sentence(rng: random.Random, words: WordList) -> str:
    if rng.random() < 0.4:
        frame = rng.choice(_FRAMES)
        return frame.format(a=words.sample(rng), b=words.sample(rng), c=words.sample(rng))
    return " ".join(words.sample(rng) for _ in range(rng.randint(3, 7)))


def generate_texts(
    n_train: int,
    n_dev: int,
    n_test: int,
    seed: int = 0,
    hand_test_share: float = 0.2,
    mix: tuple[float, float, float] = (0.04, 0.5, 0.46),
    word_top_n: int = 4000,
) -> dict[str, list[tuple[str, str]]]:
    """Return ``{split: [(kind, text), ...]}``; texts are unique within test and absent from train/dev.

    ``mix`` is the share of (hand, template, wordfreq) texts in each split. A ``hand_test_share`` of the
    hand-written sentences is reserved for the test split (all of them are used there); the others may
    repeat in train and dev (with other voices).
    """
    rng = random.Random(seed)
    words = WordList(word_top_n)
    hand = [normalize_text(s) for s in HAND_SENTENCES]
    rng.shuffle(hand)
    n_hand_test = max(1, int(len(hand) * hand_test_share))
    hand_test, hand_train = hand[:n_hand_test], hand[n_hand_test:]
    makers: dict[str, Callable[[], str]] = {
        "template": lambda: normalize_text(_template_sentence(rng)),
        "wordfreq": lambda: normalize_text(_wordfreq_sentence(rng, words)),
    }

    def draw(n: int, hand_pool: list[str], seen: set[str], unique_hand: bool) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        n_hand = min(n, len(hand_pool)) if unique_hand else round(n * mix[0])
        for i in range(n_hand):
            out.append(("hand", hand_pool[i] if unique_hand else rng.choice(hand_pool)))
        n_tmpl = round((n - n_hand) * mix[1] / (mix[1] + mix[2]))
        for kind, count in (("template", n_tmpl), ("wordfreq", n - n_hand - n_tmpl)):
            made = 0
            while made < count:
                text = makers[kind]()
                if text and text not in seen:
                    seen.add(text)
                    out.append((kind, text))
                    made += 1
        rng.shuffle(out)
        return out

    seen: set[str] = set(hand)
    test = draw(n_test, hand_test, seen, unique_hand=True)
    dev = draw(n_dev, hand_train, seen, unique_hand=False)
    train = draw(n_train, hand_train, seen, unique_hand=False)
    test_texts = {t for _, t in test}
    assert not test_texts & {t for _, t in train + dev}, "a test text leaked into train/dev"
    return {"train": train, "dev": dev, "test": test}
