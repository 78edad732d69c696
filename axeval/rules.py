"""Programmatic checkers for rule concepts: does a generation follow a rule such as "write in capital letters"?

A rule concept (`concept_type: "rule"` in a concept list, e.g. the packaged `axdata/resources/rules.jsonl`)
may name a checker. A checker spec is a registry name, with an argument after a colon for the parametric ones:
`"all_capital"`, `"max_words:50"`, `"starts_with:Certainly"`. `resolve_checker` turns a spec into a function
`text -> float` in [0, 1] (1 = the rule is followed) and raises one `RuleCheckerError` naming the known checkers
for anything else — call it when a config or concept list is loaded, before any model or LLM call.

Scores: most checkers are pass/fail (1.0 / 0.0); `all_capital`, `all_lowercase` and `exclamation_sentences`
are the share of letters or sentences that comply, so a text that is almost compliant scores almost 1. The
reference's rule evaluator (see docs/reference/reps_suppression.md §3) rates on the judge's 0–2 scale: multiply
by 2 to compare. Tolerances are chosen so that a rule is judged on the words of the answer: markdown, quotes,
emoji and trailing whitespace never decide a check, and a text without any word follows no rule (it scores 0
everywhere, also for "no digits" and "no letter e" — an empty answer must not count as a successful steer).

Rules that need language identification or a parser (answer in French, past tense, passive voice) have no
checker: the LM judge rates them. Only the standard library is used here (no torch, no `emoji` package).
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from axdata.errors import InputError

Checker = Callable[[str], float]

# A word: letters/digits, with inner apostrophes or hyphens ("don't", "well-known" are one word each).
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
# Characters that may trail the last sentence without changing how it ends: quotes, brackets, markdown.
_TRAILERS = "\"'”’»)]}*_`~"
# Sentence-final punctuation run, then optional closing quotes/brackets, then a space or the end of the line.
_SENTENCE_END = re.compile(r"([.!?…]+)[\"'”’»)\]*_]*(?=\s|$)")
_BULLET_ITEM = re.compile(r"^\s*[-*•‣◦+]\s+\S")
_NUMBERED_ITEM = re.compile(r"^\s*\d+[.)](?:\s|$)")
_CODE_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_URL = re.compile(r"(?:https?://|\bwww\.)[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)  # a host with a dot
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")
_POSTSCRIPT = re.compile(r"^\s*[*_]*P\.\s?(?:P\.\s?)?S\.")
_HASHTAG = re.compile(r"(?<![\w#&])#([^\W\d_][\w]*)")
# Code points that are emoji (pictographs, emoticons, transport, flags, dingbats, misc symbols); chosen over
# the `emoji` package to keep this module dependency-free. ©, ® and ™ are left out: they occur in plain prose.
_EMOJI_RANGES = ((0x1F000, 0x1FAFF), (0x2600, 0x27BF), (0x2B50, 0x2B55), (0x231A, 0x231B), (0x23E9, 0x23FA),
                 (0x2934, 0x2935), (0x3030, 0x3030), (0x303D, 0x303D), (0x3297, 0x3299))


class RuleCheckerError(InputError):
    """A rule concept names a checker that does not exist, or gives it an unusable argument."""


def words(text: str) -> list[str]:
    """The words of `text` (see `_WORD`), in order."""
    return _WORD.findall(text)


def is_emoji(character: str) -> bool:
    """Whether one character is an emoji (by code point; see `_EMOJI_RANGES`)."""
    point = ord(character)
    return any(low <= point <= high for low, high in _EMOJI_RANGES)


def _share(hits: int, total: int) -> float:
    return hits / total if total else 0.0


def _cased_letters(text: str) -> list[str]:
    # Letters with case only: digits, punctuation and caseless scripts neither help nor hurt a case rule.
    return [character for character in text if character.isupper() or character.islower()]


def all_capital(text: str) -> float:
    """Share of cased letters that are upper case ("HELLO, WORLD 42!" → 1.0); 0 without any cased letter."""
    letters = _cased_letters(text)
    return _share(sum(letter.isupper() for letter in letters), len(letters))


def all_lowercase(text: str) -> float:
    """Share of cased letters that are lower case ("hello, world 42!" → 1.0); 0 without any cased letter."""
    letters = _cased_letters(text)
    return _share(sum(letter.islower() for letter in letters), len(letters))


def uses_emoji(text: str) -> float:
    """1 if the text has words and at least one emoji (any of `_EMOJI_RANGES`), else 0."""
    return float(bool(words(text)) and any(is_emoji(character) for character in text))


def no_letter_e(text: str) -> float:
    """1 if the text has words and no letter e in any case or accent (é, Ê count: they decompose to e)."""
    if not words(text):
        return 0.0
    plain = unicodedata.normalize("NFKD", text).casefold()
    return float("e" not in plain)


def _strip_trailers(text: str) -> str:
    stripped = text.rstrip()
    while stripped and (stripped[-1] in _TRAILERS or stripped[-1].isspace() or is_emoji(stripped[-1])
                        or unicodedata.category(stripped[-1]) in ("Mn", "Cf")):  # emoji modifiers, ZWJ
        stripped = stripped[:-1]
    return stripped


def ends_with_question(text: str) -> float:
    """1 if the last thing written is a question mark, ignoring trailing whitespace, quotes, brackets, markdown
    and emoji ("Want more? 😊" passes); 0 otherwise or without words."""
    return float(bool(words(text)) and _strip_trailers(text).endswith(("?", "？")))


def _sentence_endings(text: str) -> list[str]:
    """The final punctuation run of each sentence ("" for a sentence without one). A line break ends a
    sentence too (list items and headings are sentences); pieces without a word (an emoji, "***") are not."""
    endings: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _SENTENCE_END.finditer(line):
            if words(line[start:match.start()]):
                endings.append(match.group(1))
            start = match.end()
        if words(line[start:]):
            endings.append("")
    return endings


def exclamation_sentences(text: str) -> float:
    """Share of sentences ending with "!" ("?!" counts; decimals like 3.5 do not split a sentence). Sentences
    are split at . ! ? … followed by a space or a line end, and at line breaks; 0 without any sentence."""
    endings = _sentence_endings(text)
    return _share(sum(ending.endswith("!") for ending in endings), len(endings))


def _list_score(text: str, item: re.Pattern[str]) -> float:
    # At least two items, and items are at least half of the non-blank lines: an introduction or a closing
    # line is tolerated, a paragraph that merely contains one list is not.
    lines = [line for line in text.splitlines() if line.strip()]
    items = sum(bool(item.match(line)) for line in lines)
    return float(items >= 2 and 2 * items >= len(lines))


def bullet_list(text: str) -> float:
    """1 if the answer is a bulleted list: ≥ 2 lines starting with -, *, •, ‣, ◦ or + and a space, making up
    at least half of the non-blank lines (one intro or closing line is fine); 0 otherwise."""
    return _list_score(text, _BULLET_ITEM)


def numbered_list(text: str) -> float:
    """1 if the answer is a numbered list: ≥ 2 lines starting with "1." / "2)" …, making up at least half of
    the non-blank lines; the numbering need not be consecutive. 0 otherwise."""
    return _list_score(text, _NUMBERED_ITEM)


def no_digits(text: str) -> float:
    """1 if the text has words and no digit of any script (number words like "three" are fine)."""
    return float(bool(words(text)) and not any(character.isdigit() for character in text))


def no_commas(text: str) -> float:
    """1 if the text has words and no comma (ASCII or full-width)."""
    return float(bool(words(text)) and "," not in text and "，" not in text)


def json_output(text: str) -> float:
    """1 if the whole answer is one JSON object or array (one surrounding ``` / ```json fence is allowed,
    as chat models add it); a bare JSON string or number is not JSON output. 0 otherwise."""
    body = text.strip()
    fenced = _CODE_FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except ValueError:
        return 0.0
    return float(isinstance(value, (dict, list)))


def has_url(text: str) -> float:
    """1 if the text contains a web address (http://, https:// or www.); 0 otherwise."""
    return float(bool(_URL.search(text)))


def has_email(text: str) -> float:
    """1 if the text contains an e-mail address (name@domain.tld); 0 otherwise."""
    return float(bool(_EMAIL.search(text)))


def _valid_date(year: str, month: str, day: str) -> bool:
    try:
        datetime.date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def has_iso_date(text: str) -> float:
    """1 if the text contains a real calendar date written YYYY-MM-DD (2024-02-30 does not count)."""
    return float(any(_valid_date(*match.groups()) for match in _ISO_DATE.finditer(text)))


def postscript(text: str) -> float:
    """1 if the answer ends with a postscript: a line starting with "P.S." (or "P.P.S.", "P. S.", markdown
    emphasis allowed) with nothing after it but its own continuation lines (no later paragraph)."""
    lines = text.strip().splitlines()
    starts = [index for index, line in enumerate(lines) if _POSTSCRIPT.match(line)]
    if not starts:
        return 0.0
    tail = lines[starts[-1] + 1:]
    # A blank line followed by more text is a new paragraph after the postscript.
    for index, line in enumerate(tail):
        if not line.strip() and any(rest.strip() for rest in tail[index + 1:]):
            return 0.0
    return 1.0


def max_words(text: str, limit: int) -> float:
    """1 if the text has between 1 and `limit` words (see `words`); 0 otherwise."""
    return float(0 < len(words(text)) <= limit)


def min_words(text: str, limit: int) -> float:
    """1 if the text has at least `limit` words (see `words`); 0 otherwise."""
    return float(len(words(text)) >= limit)


def starts_with(text: str, expected: tuple[str, ...]) -> float:
    """1 if the first words of the text are `expected`, ignoring case, punctuation and markdown
    ("**Certainly!** Here…" starts with "Certainly"); 0 otherwise."""
    first = [word.casefold() for word in words(text)[:len(expected)]]
    return float(first == list(expected))


def hashtags(text: str, minimum: int) -> float:
    """1 if the text has at least `minimum` distinct hashtags (# followed by a word starting with a letter;
    "#1" and "C#" are not hashtags); 0 otherwise."""
    found = {match.group(1).casefold() for match in _HASHTAG.finditer(text)}
    return float(len(found) >= minimum)


CHECKERS: dict[str, Checker] = {
    "all_capital": all_capital,
    "all_lowercase": all_lowercase,
    "uses_emoji": uses_emoji,
    "no_letter_e": no_letter_e,
    "ends_with_question": ends_with_question,
    "exclamation_sentences": exclamation_sentences,
    "bullet_list": bullet_list,
    "numbered_list": numbered_list,
    "no_digits": no_digits,
    "no_commas": no_commas,
    "json_output": json_output,
    "has_url": has_url,
    "has_email": has_email,
    "has_iso_date": has_iso_date,
    "postscript": postscript,
}


def _positive_int(argument: str) -> int:
    if not argument.isdigit() or int(argument) < 1:
        raise ValueError("a whole number ≥ 1")
    return int(argument)


def _word_sequence(argument: str) -> tuple[str, ...]:
    found = tuple(word.casefold() for word in words(argument))
    if not found:
        raise ValueError("one or more words")
    return found


@dataclass(frozen=True)
class _Parametric:
    check: Callable[[str, Any], float]
    parse: Callable[[str], Any]  # raises ValueError with what the argument must be
    placeholder: str  # how `known_checkers` writes the argument


PARAMETRIC: dict[str, _Parametric] = {
    "max_words": _Parametric(max_words, _positive_int, "N"),
    "min_words": _Parametric(min_words, _positive_int, "N"),
    "starts_with": _Parametric(starts_with, _word_sequence, "WORD"),
    "hashtags": _Parametric(hashtags, _positive_int, "N"),
}


def known_checkers() -> list[str]:
    """Every valid spec form, sorted: plain names and `name:ARG` for the parametric ones."""
    forms = list(CHECKERS) + [f"{name}:{entry.placeholder}" for name, entry in PARAMETRIC.items()]
    return sorted(forms)


def resolve_checker(spec: str, *, where: str = "rule checker") -> Checker:
    """The checker function for `spec` ("name" or "name:argument"); `where` names the input in the error
    (e.g. "rules.jsonl, line 4, 'checker'"). Raises `RuleCheckerError` listing the known checkers."""
    if not isinstance(spec, str):
        raise RuleCheckerError(f"{where}: the checker {spec!r} is not a string. Fix: write one of "
                               f"{', '.join(known_checkers())}.")
    name, colon, argument = spec.strip().partition(":")
    if name in CHECKERS:
        if colon:
            raise RuleCheckerError(f"{where}: the checker {name!r} takes no argument, got {spec!r}. Fix: write "
                                   f"{name!r} alone.")
        return CHECKERS[name]
    entry = PARAMETRIC.get(name)
    if entry is None:
        raise RuleCheckerError(f"{where}: unknown rule checker {spec!r}. Fix: use one of "
                               f"{', '.join(known_checkers())} (or no checker: the LM judge rates the rule).")
    try:
        value = entry.parse(argument.strip())
    except ValueError as error:
        raise RuleCheckerError(f"{where}: the checker {spec!r} needs {error} after the colon. Fix: write it as "
                               f"{name}:{entry.placeholder}, e.g. {_example(name)}.") from None
    return functools.partial(_bound, entry.check, value)


def check(spec: str, text: str) -> float:
    """The score in [0, 1] of `text` under the checker `spec` (see `resolve_checker`)."""
    return resolve_checker(spec)(text)


def _bound(function: Callable[[str, Any], float], argument: Any, text: str) -> float:
    # A parametric checker with its argument fixed: the partial shows both in its repr.
    return function(text, argument)


def _example(name: str) -> str:
    return f"{name}:Certainly" if PARAMETRIC[name].placeholder == "WORD" else f"{name}:50"
