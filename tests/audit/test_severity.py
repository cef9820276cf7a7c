"""Every warning the data audit can write has a severity rule of its own (cxrlab.audit.severity): the model
card and the service page rank them by it, so a reworded warning must not silently fall to the default."""

from __future__ import annotations

import pytest

from cxrlab.audit.core import make_warnings
from cxrlab.audit.multilabel import findings_warnings
from cxrlab.audit.severity import LEVELS, RULES, classify, rank, ranked, rule_for


def _everything() -> dict:
    """An audit result in which every check of :func:`make_warnings` fires."""
    return {
        "metadata_baseline": {
            "accuracy": 0.98,
            "balanced_accuracy": 0.98,
            "chance": 0.51,
            "chance_balanced": 0.5,
            "p_value": 0.001,
            "signal": [{"property": "color_mode", "balanced_accuracy": 0.95}],
        },
        "image_baseline": {"balanced_accuracy": 0.97, "chance_balanced": 0.5},
        "duplicates": {
            "summary": {
                "test_images_exactly_duplicating_train_or_val": 2,
                "test_images_duplicating_train_or_val": 5,
                "val_images_duplicating_train": 1,
                "exact_within_split": 1,
                "near_within_split": 2,
                "pairs_with_different_labels": 1,
            },
            "method": {"max_distance": 24},
        },
        "patients": {
            "cross_split_count": 3,
            "cross_split_by_pair": {"train/test": 3},
            "cross_split": [{"patient": "p1"}, {"patient": "p2"}],
            "images_with_id": 10,
            "images_without_id": 5,
            "source": "file-name pattern 'x'",
        },
        "counts": {"train": {"a": 50, "b": 50}, "val": {"a": 4, "b": 4}, "test": {"a": 10, "b": 10}},
        "split_origin": {},
        "unreadable": [{"path": "x.png", "reason": "truncated"}],
    }


EXPECTED = {  # the first words of each warning and the severity the model card gives it
    "2 image(s) of the test split are exact copies": "critical",
    "3 patient(s) have images in more than one split": "critical",
    "Labels can be predicted from acquisition properties": "high",
    "A linear model on 8x8 thumbnails": "high",
    "3 image(s) of the test split are near duplicates": "high",
    "1 validation image(s) duplicate training images": "high",
    "1 duplicate pair(s) carry different labels": "high",
    "3 duplicate pair(s) inside a split": "medium",
    "5 of 15 images (33%) have no patient id": "medium",
    "The given validation split is tiny": "medium",
    "1 unreadable file(s) skipped": "low",
}


def test_every_audit_warning_has_its_own_rule():
    warnings = make_warnings(_everything())
    assert len(warnings) == len(EXPECTED)
    for start, level in EXPECTED.items():
        [w] = [w for w in warnings if w.startswith(start)]
        assert rule_for(w) is not None, w
        assert classify(w)["severity"] == level, w
    baseline = {
        "per_finding": {
            "Effusion": {
                "auc": 0.7,
                "auc_ci95": [0.65, 0.75],
                "signal": [{"column": "View Position", "auc": 0.7}],
            }
        }
    }
    [finding] = findings_warnings(baseline)
    assert classify(finding)["severity"] == "high"
    assert classify("the data audit could not run (ValueError: x); run `cxr audit`")["severity"] == "medium"
    mix = "the test split has no image of view AP (train 40, val 6): its performance there cannot be measured"
    assert classify(mix) == {"severity": "medium", "topic": "subgroups", "text": mix}  # audit.subgroups
    assert (
        classify("1,204 label-file row(s) have no image under the data folder and were left out")["severity"]
        == "low"
    )


def test_ranked_is_most_severe_first_each_once():
    warnings = make_warnings(_everything())
    got = ranked(list(reversed(warnings)) + warnings)  # every sentence twice, in the wrong order
    assert len(got) == len(warnings)
    assert [rank(w["severity"]) for w in got] == sorted(rank(w["severity"]) for w in got)
    assert got[0]["severity"] == "critical" and got[-1]["severity"] == "low"
    assert {r[1] for r in RULES} <= set(LEVELS)


@pytest.mark.parametrize("text", ["something new the audit says", ""])
def test_unknown_sentences_are_medium(text):
    assert classify(text)["severity"] == "medium" and rule_for(text) is None
