"""The escalation policy, without I/O: what counts as an answer, and when the strong model is asked."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from service.cascade.policy import Answer, Defect, EscalationReason, Unavailable, escalation, read_answer

LABELS = ("positive", "negative", "neutral")


def reply(label: object = "positive", confidence: object = 0.9) -> str:
    return json.dumps({"label": label, "confidence": confidence})


# --- read_answer ------------------------------------------------------------------------------


def test_valid_json_is_an_answer_with_an_exact_decimal_confidence() -> None:
    verdict = read_answer('{"label": "negative", "confidence": 0.93}', "end_turn", LABELS)
    assert verdict == Answer("negative", Decimal("0.93"))
    assert isinstance(verdict.confidence, Decimal)


def test_key_order_and_whitespace_do_not_matter() -> None:
    verdict = read_answer('\n  { "confidence" : 0.5 ,\n "label" : "neutral" }  ', "end_turn", LABELS)
    assert verdict == Answer("neutral", Decimal("0.5"))


@pytest.mark.parametrize(
    "text",
    [
        '{"label": "positive", "confidence": 0.9',  # cut off
        '{"label": "positive", "confidence": }',
        "positive",
        "{'label': 'positive', 'confidence': 0.9}",  # Python repr, not JSON
        '{"label": "positive", "confidence": 0.9} trailing',
        '```json\n{"label": "positive", "confidence": 0.9}\n```',
    ],
    ids=["truncated", "missing-value", "bare-label", "single-quotes", "trailing-text", "code-fence"],
)
def test_broken_json_is_an_invalid_answer(text: str) -> None:
    verdict = read_answer(text, "end_turn", LABELS)
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.INVALID_ANSWER
    assert "not valid JSON" in verdict.detail


@pytest.mark.parametrize(
    "text",
    [
        '{"label": "positive", "confidence": 0.9, "reasoning": "it is nice"}',
        '{"label": "positive"}',
        '{"confidence": 0.9}',
        "{}",
        '["positive", 0.9]',
        '"positive"',
        "0.9",
        "null",
    ],
    ids=["extra-key", "no-confidence", "no-label", "empty-object", "array", "string", "number", "null"],
)
def test_anything_but_exactly_label_and_confidence_does_not_match_the_schema(text: str) -> None:
    verdict = read_answer(text, "end_turn", LABELS)
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.INVALID_ANSWER
    assert "schema" in verdict.detail


@pytest.mark.parametrize(
    "label",
    ["spam", "Positive", "positive ", "", None, 1, ["positive"], {"positive": 1}],
    ids=["other", "case", "trailing-space", "empty", "null", "int", "list", "object"],
)
def test_a_label_outside_the_set_is_invalid(label: object) -> None:
    verdict = read_answer(reply(label=label), "end_turn", LABELS)
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.INVALID_ANSWER
    assert "not one of the allowed labels" in verdict.detail


@pytest.mark.parametrize(
    "raw_confidence",
    ['"0.9"', '"high"', "true", "false", "null", "NaN", "Infinity", "-Infinity", "-0.1", "1.0001", "2", "1e400"],
)
def test_a_confidence_that_is_not_a_number_in_0_to_1_is_invalid(raw_confidence: str) -> None:
    text = '{"label": "positive", "confidence": ' + raw_confidence + "}"
    verdict = read_answer(text, "end_turn", LABELS)
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.INVALID_ANSWER
    assert "outside 0..1" in verdict.detail


@pytest.mark.parametrize(
    ("raw_confidence", "expected"),
    [("0", "0"), ("0.0", "0"), ("-0", "0"), ("1", "1"), ("1.0", "1"), ("1e-3", "0.001"), ("0.9999", "0.9999")],
)
def test_the_bounds_0_and_1_are_valid_confidences(raw_confidence: str, expected: str) -> None:
    text = '{"label": "neutral", "confidence": ' + raw_confidence + "}"
    verdict = read_answer(text, "end_turn", LABELS)
    assert isinstance(verdict, Answer)
    assert verdict.label == "neutral"
    assert verdict.confidence == Decimal(expected)


def test_refusal_wins_even_over_a_well_formed_answer() -> None:
    verdict = read_answer(reply(), "refusal", LABELS)
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.REFUSED


def test_refusal_with_no_text() -> None:
    verdict = read_answer(None, "refusal", LABELS)
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.REFUSED


@pytest.mark.parametrize("stop_reason", ["max_tokens", "model_context_window_exceeded"])
@pytest.mark.parametrize("text", [reply(), '{"label": "positive", "confi', None])
def test_a_cut_off_answer_is_truncated_even_if_it_parses(stop_reason: str, text: str | None) -> None:
    verdict = read_answer(text, stop_reason, LABELS)
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.TRUNCATED
    assert stop_reason in verdict.detail


@pytest.mark.parametrize("text", ["", None])
def test_no_text_is_an_invalid_answer(text: str | None) -> None:
    verdict = read_answer(text, "end_turn", LABELS)
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.INVALID_ANSWER


def test_whitespace_only_text_is_an_invalid_answer() -> None:
    verdict = read_answer("   \n", "end_turn", LABELS)
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.INVALID_ANSWER


def test_labels_with_unicode_and_quotes_round_trip() -> None:
    labels = ('say "yes"', "日本語", "emoji 🙂")
    for label in labels:
        assert read_answer(reply(label=label, confidence=0.7), "end_turn", labels) == Answer(label, Decimal("0.7"))


# --- escalation ------------------------------------------------------------------------------


THRESHOLD = Decimal("0.85")


def test_unavailable_escalates_as_cheap_unavailable() -> None:
    assert escalation(Unavailable("529 overloaded"), THRESHOLD) is EscalationReason.CHEAP_UNAVAILABLE


@pytest.mark.parametrize(
    "reason", [EscalationReason.INVALID_ANSWER, EscalationReason.REFUSED, EscalationReason.TRUNCATED]
)
def test_a_defect_escalates_with_its_own_reason(reason: EscalationReason) -> None:
    assert escalation(Defect(reason, "detail"), THRESHOLD) is reason


@pytest.mark.parametrize("threshold", [Decimal(0), Decimal("0.5"), Decimal(1)])
def test_a_defect_escalates_whatever_the_threshold(threshold: Decimal) -> None:
    defect = Defect(EscalationReason.INVALID_ANSWER, "not JSON")
    assert escalation(defect, threshold) is EscalationReason.INVALID_ANSWER


@pytest.mark.parametrize(
    ("confidence", "expected"),
    [
        (Decimal("0.85"), None),  # exactly the threshold keeps the cheap answer
        (Decimal("0.8500"), None),
        (Decimal("0.8500001"), None),
        (Decimal(1), None),
        (Decimal("0.8499999"), EscalationReason.LOW_CONFIDENCE),
        (Decimal("0.84"), EscalationReason.LOW_CONFIDENCE),
        (Decimal(0), EscalationReason.LOW_CONFIDENCE),
    ],
)
def test_threshold_boundary(confidence: Decimal, expected: EscalationReason | None) -> None:
    assert escalation(Answer("positive", confidence), THRESHOLD) == expected


def test_threshold_boundary_through_read_answer() -> None:
    at = read_answer(reply(confidence=0.85), "end_turn", LABELS)
    below = read_answer(reply(confidence=0.8499), "end_turn", LABELS)
    assert escalation(at, THRESHOLD) is None
    assert escalation(below, THRESHOLD) is EscalationReason.LOW_CONFIDENCE


def test_threshold_zero_never_escalates_an_answer_and_one_escalates_all_but_certainty() -> None:
    assert escalation(Answer("positive", Decimal(0)), Decimal(0)) is None
    assert escalation(Answer("positive", Decimal("0.9999")), Decimal(1)) is EscalationReason.LOW_CONFIDENCE
    assert escalation(Answer("positive", Decimal(1)), Decimal(1)) is None


def test_deeply_nested_json_is_an_invalid_answer_not_a_crash() -> None:
    verdict = read_answer("[" * 5000 + "]" * 5000, "end_turn", ["a", "b"])
    assert isinstance(verdict, Defect)
    assert verdict.reason is EscalationReason.INVALID_ANSWER


def test_confidence_is_read_to_the_precision_the_ledger_stores() -> None:
    verdict = read_answer('{"label": "a", "confidence": 0.8499996}', "end_turn", ["a", "b"])
    assert isinstance(verdict, Answer)
    assert verdict.confidence == Decimal("0.850000")
    assert escalation(verdict, Decimal("0.85")) is None
