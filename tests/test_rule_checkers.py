"""The rule checkers of `axeval.rules` on hand-written answers, and the packaged rule list's checker names."""

import subprocess
import sys

import pytest

from axdata.concepts import load_rule_concepts
from axdata.errors import InputError
from axeval.rules import CHECKERS, RuleCheckerError, check, known_checkers, resolve_checker

# (checker spec, text that follows the rule, text that breaks it)
CASES = [
    ("all_capital", "HELLO, WORLD! 42 TIMES — ÉTÉ.", "Hello, world!"),
    ("all_lowercase", "hello, world! 42 times — été.", "hello, World!"),
    ("uses_emoji", "Great idea 🎉 let's go", "Great idea :) let's go"),
    ("no_letter_e", "A big cat sat on a mat.", "A cat sat on an ÉLAN."),
    ("ends_with_question", "Here it is. Want more? 😊\n", "Is it? Here it is."),
    ("exclamation_sentences", "It costs 3.5 dollars! Wow!\n- Buy it now!", "It costs 3.5 dollars! Wow."),
    ("max_words:5", "one two three four five", "one two three four five six"),
    ("min_words:3", "one two three", "one two"),
    ("starts_with:Certainly", "**Certainly!** Here you go.", "Sure, certainly."),
    ("starts_with:Here is my response", "Here is my response: yes.", "Here is the response: yes."),
    ("bullet_list", "Some tips:\n- sleep\n- eat\n* drink", "I like - dashes and\n- one item only"),
    ("numbered_list", "1. sleep\n2) eat\n\n4. drink", "**Bold** text with 3.5 in it\nand 1. in a line"),
    ("no_digits", "Three apples and twenty pears.", "3 apples and twenty pears."),
    ("no_commas", "Apples and pears.", "Apples, pears."),
    ("json_output", '```json\n{"a": [1, 2]}\n```', 'Here is JSON: {"a": 1}'),
    ("has_url", "See https://en.wikipedia.org/wiki/Cat for more.", "See the Wikipedia page on cats."),
    ("has_email", "Write to jane.doe@example.org today.", "Write to jane at example dot org."),
    ("has_iso_date", "It opened on 2024-02-29.", "It opened on 2023-02-29 or 29/02/2024."),
    ("postscript", "Thanks!\n\nP.S. Bring snacks.\nAnd water.", "P.S. First.\n\nThen the letter."),
    ("hashtags:2", "Fun day #beach #Summer", "Fun day #1 #beach and C#"),
]


@pytest.mark.parametrize(("spec", "follows", "breaks"), CASES, ids=[case[0] for case in CASES])
def test_checker_passes_and_fails_hand_written_answers(spec, follows, breaks):
    assert check(spec, follows) == 1.0
    assert check(spec, breaks) < 1.0


def test_every_registered_checker_has_a_case():
    covered = {spec.partition(":")[0] for spec, _, _ in CASES}
    assert {form.partition(":")[0] for form in known_checkers()} <= covered


def test_graded_checkers_give_the_complying_share():
    assert check("all_capital", "ABC def") == pytest.approx(0.5)
    assert check("all_lowercase", "ABC def") == pytest.approx(0.5)
    assert check("exclamation_sentences", "Yes! No. Maybe! Sure?") == pytest.approx(0.5)


@pytest.mark.parametrize("spec", sorted(CHECKERS) + ["max_words:5", "starts_with:Yes", "hashtags:1"])
@pytest.mark.parametrize("text", ["", "   \n", "🎉 ***"])
def test_an_answer_without_words_follows_no_rule(spec, text):
    # Even "no digits" and "no letter e": an empty generation must not count as a successful steer.
    assert check(spec, text) == 0.0


def test_numbered_list_allows_an_item_number_alone_on_its_line():
    assert check("numbered_list", "1.\n\nsleep\n\n2.\n\neat") == 1.0


def test_json_output_needs_an_object_or_array():
    assert check("json_output", "[1, 2]") == 1.0
    assert check("json_output", '"just a string"') == 0.0
    assert check("json_output", "{'single': 'quotes'}") == 0.0


def test_unknown_checker_is_one_input_error_listing_the_known_ones():
    with pytest.raises(RuleCheckerError) as info:
        resolve_checker("all_caps", where="rules.jsonl, line 4, 'checker'")
    message = str(info.value)
    assert isinstance(info.value, InputError)
    assert message.startswith("rules.jsonl, line 4, 'checker': unknown rule checker 'all_caps'")
    assert "Fix:" in message and all(form in message for form in known_checkers())


@pytest.mark.parametrize(("spec", "needs"), [("max_words:ten", "a whole number"), ("max_words", "a whole number"),
                                              ("hashtags:0", "a whole number"), ("starts_with: !", "one or more"),
                                              ("all_capital:2", "takes no argument"), (3, "not a string")])
def test_bad_checker_arguments_say_what_they_need(spec, needs):
    with pytest.raises(RuleCheckerError, match=needs):
        resolve_checker(spec)


def test_packaged_rules_are_rules_and_name_only_known_checkers():
    rules = load_rule_concepts()
    assert len(rules) >= 20
    assert all(rule.concept_type == "rule" for rule in rules)
    named = [rule for rule in rules if rule.checker is not None]
    assert len(named) >= 15
    for rule in named:
        resolve_checker(rule.checker, where=f"rules.jsonl, concept {rule.concept_id}")  # raises if unknown
    assert len({rule.concept for rule in rules}) == len(rules)


def test_rules_module_imports_no_heavy_dependency():
    # Checkers run at config load and inside metric code: they must not pull in torch or transformers.
    code = "import sys, axeval.rules; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
