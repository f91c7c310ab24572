"""The simulator's corpus and its hidden truth: the samples, the directives, and each model's accuracy.

In-process: the corpus and the classification are checked directly, with no simulator running.
"""

from __future__ import annotations

import statistics

import pytest

from service.simulator.behaviour import classify
from service.simulator.corpus import LABEL_SETS, SAMPLES, TASK_INSTRUCTIONS, truth_for
from tests.simulator.message_requests import HAIKU, HAIKU_55, SENTIMENT, SONNET_55


def test_corpus_shape() -> None:
    assert len(SAMPLES) >= 300
    assert len({sample.text for sample in SAMPLES}) == len(SAMPLES)
    assert set(LABEL_SETS) == {"sentiment", "support_intent", "moderation"} == set(TASK_INSTRUCTIONS)
    for sample in SAMPLES:
        assert sample.truth in LABEL_SETS[sample.task]
        assert truth_for(sample.text, LABEL_SETS[sample.task]) == sample.truth
        assert truth_for("{{sim:cheap=529,ok}} " + sample.text, LABEL_SETS[sample.task]) == sample.truth
    assert {sample.truth for sample in SAMPLES} == {label for labels in LABEL_SETS.values() for label in labels}
    assert truth_for("not in the corpus", SENTIMENT) is None


def test_directives_do_not_change_the_hidden_truth() -> None:
    sample = SAMPLES[10]
    labels = LABEL_SETS[sample.task]
    with_directive = classify(7, HAIKU, "{{sim:cheap=529}} " + sample.text, labels)
    assert with_directive == classify(7, HAIKU, sample.text, labels)
    assert with_directive.truth == sample.truth


@pytest.mark.parametrize("seed", [7, 1, 2026])
def test_corpus_accuracy_and_confidence(seed: int) -> None:
    for model, low, high in ((HAIKU, 0.85, 0.90), (HAIKU_55, 0.85, 0.90), (SONNET_55, 0.95, 1.0)):
        answers = [classify(seed, model, s.text, LABEL_SETS[s.task]) for s in SAMPLES]
        accuracy = sum(a.correct for a in answers) / len(answers)
        assert low <= accuracy <= high, (model, accuracy)
        right = [a.confidence for a in answers if a.correct]
        wrong = [a.confidence for a in answers if not a.correct]
        assert statistics.mean(wrong) < statistics.mean(right)
        assert all(0.0 <= a.confidence <= 1.0 and a.confidence == round(a.confidence, 2) for a in answers)
        if model == HAIKU:
            escalated = sum(a.confidence < 0.85 for a in answers) / len(answers)
            assert 0.10 <= escalated <= 0.35, escalated
            caught = sum(c < 0.85 for c in wrong) / len(wrong)
            assert 0.5 <= caught < 1.0, caught
        for sample, a in zip(SAMPLES, answers, strict=True):
            assert a.label in LABEL_SETS[sample.task]
            assert a.truth == sample.truth
