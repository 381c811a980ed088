"""A repaired slot queued before session 19 recorded the rule is labelled only "unrecorded": session 19's own first
runs queued lightest-change repairs before the record, so the label must not name a rule (review R2 19 L2)."""

from deepslim.search import trials


def test_the_unrecorded_label_names_no_rule():
    label = trials.REPAIR_RULE_UNRECORDED
    assert label.startswith("unrecorded") and "session 19" in label
    assert not any(word in label for word in ("int8", "lightest", "first"))
    assert label != trials.REPAIR_RULE
