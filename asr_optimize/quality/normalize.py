"""Hindi text normalization for scoring (WER/CER), comparable with AI4Bharat's Vistaar benchmark.

Why: WER on Hindi swings by several points with punctuation, danda and Unicode spelling variants, so
our numbers only mean something next to published ones (Vistaar: IndicWav2Vec Hindi 12.2% WER on
Kathbath) if references and hypotheses are normalized the way Vistaar's ``evaluation.py`` does:

1. delete ``string.punctuation`` plus ``।۔'-॥``  (``str.translate``; a hyphen joins: "बात-चीत" -> "बातचीत")
2. ``IndicNormalizerFactory().get_normalizer("hi").normalize`` with the library defaults
   (``remove_nuktas=False``, ``nasals_mode="do_nothing"``, ``do_normalize_chandras=False``)
3. collapse runs of spaces; score with jiwer (``jiwer.cer`` counts the space as a character).

Our default policy (``VISTAAR``) does exactly that, plus three deliberate, documented extras that only
matter for text Vistaar would mis-score:

- Unicode NFC first, so composed and decomposed spellings of the same word compare equal before the
  Indic normalizer runs;
- *all* Unicode punctuation (categories ``P*``: curly quotes, ellipsis, ``॰``, Arabic comma, ...) is
  removed too, not only ASCII; dashes other than the hyphen (en/em dash, ``―``) become a space because
  they separate words (Vistaar's normalizer turns "—" into " - " and then keeps the "-" as a word);
- all whitespace (tabs, newlines, NBSP) collapses to one space and the ends are stripped;
  punctuation the normalizer itself emits ("…" -> "...", curly quotes -> '"') is deleted again.

Nukta policy: **kept** (Vistaar keeps it: ``remove_nuktas=False``). "ज़" and "ज" are different
letters and the IndicWav2Vec vocabulary has both, so a dropped nukta is an error. The normalizer writes
nukta letters decomposed (``क़`` U+0958 -> ``क`` + ``़`` U+093C), so CER counts a missing nukta as one
character error; NFC keeps U+0958..U+095F decomposed (they are composition exclusions).

Anusvara / chandrabindu policy: **unchanged** (Vistaar uses ``nasals_mode="do_nothing"`` and no
chandra normalization): "हैं" vs "हैँ" and "संत" vs "सन्त" are scored as errors, as in the benchmark.
``TextNormalization`` exposes the library's options (``remove_nuktas``, ``nasals_mode``,
``normalize_chandras``) for lenient secondary analyses; never mix policies inside one comparison.

``VISTAAR_EXACT`` reproduces Vistaar's code byte for byte (no NFC, ASCII punctuation only, spaces
only) for cross-checking; ``RAW`` only collapses whitespace.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from indicnlp.normalize.indic_normalize import BaseNormalizer

NasalsMode = Literal["do_nothing", "to_anusvaara_strict", "to_anusvaara_relaxed", "to_nasal_consonants"]

#: Exactly what Vistaar's evaluation.py deletes before normalizing.
VISTAAR_PUNCTUATION = string.punctuation + "।۔'-॥"
#: Dashes that separate words rather than join them; replaced by a space (hyphens U+2010/2011 join).
WORD_SEPARATING_DASHES = "\u2012\u2013\u2014\u2015\u2e3a\u2e3b\ufe58\ufe63\uff0d"
#: Tokens a wav2vec2 CTC tokenizer can leave in decoded text.
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "</s>", "<pad>", "<unk>", "[PAD]", "[UNK]")

_VISTAAR_TABLE = str.maketrans("", "", VISTAAR_PUNCTUATION)
_DASH_TABLE = str.maketrans({c: " " for c in WORD_SEPARATING_DASHES})
_SPACES = re.compile(r"\s+")
_SPACE_RUNS = re.compile(" +")


class TextNormalization(BaseModel):
    """Options of the scoring normalization; the defaults are the Vistaar-compatible policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_punctuation: bool = True
    """Delete ASCII punctuation and ``।۔'-॥`` (Vistaar's set)."""
    strip_unicode_punctuation: bool = True
    """Also delete every Unicode punctuation character (category P*); other dashes become spaces."""
    indic_normalizer: bool = True
    """Apply indic-nlp-library's Hindi (Devanagari) normalizer."""
    remove_nuktas: bool = False
    nasals_mode: NasalsMode = "do_nothing"
    normalize_chandras: bool = False
    """indic-nlp's chandra normalization (also maps chandrabindu to anusvara); off as in Vistaar."""
    strip_after_normalizer: bool = True
    """Delete punctuation the normalizer introduces ("—" -> " - ", "…" -> "...", '"' from curly quotes)."""
    collapse_all_whitespace: bool = True
    """Collapse any whitespace run and strip the ends; False collapses only runs of ' ' (Vistaar)."""


VISTAAR = TextNormalization()
VISTAAR_EXACT = TextNormalization(
    unicode_form="none",
    strip_unicode_punctuation=False,
    strip_after_normalizer=False,
    collapse_all_whitespace=False,
)
RAW = TextNormalization(
    unicode_form="none", strip_punctuation=False, strip_unicode_punctuation=False, indic_normalizer=False
)
POLICIES: dict[str, TextNormalization] = {"vistaar": VISTAAR, "vistaar_exact": VISTAAR_EXACT, "raw": RAW}


@functools.lru_cache(maxsize=16)
def _indic_normalizer(remove_nuktas: bool, nasals_mode: str, normalize_chandras: bool) -> BaseNormalizer:
    """Build (once per option set) the indic-nlp Hindi normalizer; building it compiles regexes."""
    from indicnlp.normalize.indic_normalize import IndicNormalizerFactory

    return IndicNormalizerFactory().get_normalizer(
        "hi",
        remove_nuktas=remove_nuktas,
        nasals_mode=nasals_mode,
        do_normalize_chandras=normalize_chandras,
    )


def _strip_unicode_punctuation(text: str) -> str:
    text = text.translate(_DASH_TABLE)
    return "".join(c for c in text if not unicodedata.category(c).startswith("P"))


def resolve_policy(policy: TextNormalization | str | None) -> TextNormalization:
    """Accept a policy object, a preset name ('vistaar', 'vistaar_exact', 'raw') or None (default)."""
    if policy is None:
        return VISTAAR
    if isinstance(policy, TextNormalization):
        return policy
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(
            f"unknown normalization policy {policy!r}; choose one of {sorted(POLICIES)}"
        ) from None


def normalize_hindi(text: str, policy: TextNormalization | str | None = None) -> str:
    """Normalize one Hindi transcript for scoring (see the module docstring for the policy)."""
    p = resolve_policy(policy)
    if p.unicode_form != "none":
        text = unicodedata.normalize(p.unicode_form, text)
    if p.strip_unicode_punctuation:
        text = _strip_unicode_punctuation(text)
    if p.strip_punctuation:
        text = text.translate(_VISTAAR_TABLE)
    if p.indic_normalizer:
        text = _indic_normalizer(p.remove_nuktas, p.nasals_mode, p.normalize_chandras).normalize(text)
        if p.strip_after_normalizer:
            if p.strip_unicode_punctuation:
                text = _strip_unicode_punctuation(text)
            if p.strip_punctuation:
                text = text.translate(_VISTAAR_TABLE)
    if p.collapse_all_whitespace:
        return _SPACES.sub(" ", text).strip()
    return _SPACE_RUNS.sub(" ", text)


def normalize_many(texts: Iterable[str], policy: TextNormalization | str | None = None) -> list[str]:
    """Normalize a batch with one policy (the same policy must be used for references and hypotheses)."""
    p = resolve_policy(policy)
    return [normalize_hindi(t, p) for t in texts]


def clean_ctc_output(
    text: str, special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, word_delimiter: str = "|"
) -> str:
    """Turn decoded CTC text into a plain transcript: no special tokens or delimiters, NFC, single spaces.

    Why: ``tokenizer.decode`` normally maps "|" to spaces, but with ``skip_special_tokens=False`` or a
    hand-rolled greedy decoder ``<unk>``/``<pad>`` and delimiter runs leak into the text and would count
    as words. This is *display* cleanup; scoring still goes through ``normalize_hindi``.
    """
    for token in special_tokens:
        text = text.replace(token, " ")
    if word_delimiter:
        text = text.replace(word_delimiter, " ")
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()
