"""The refusal judge's labelled set, and the judge measured on it (issue 11, item 3)."""

from collections import Counter

from mergesearch.judges.labelled import agreement, labelled_responses


def test_the_labelled_set_is_mostly_real_responses_with_enough_hard_cases():
    rows = labelled_responses()
    origins = Counter(r.origin for r in rows)
    assert len(rows) >= 300
    assert origins["generated"] > 2 * origins["hand_written"]
    assert sum(r.hard for r in rows) >= 60
    assert len({r.id for r in rows}) == len(rows)
    assert {r.source for r in rows if r.origin == "generated"} >= {"base", "aligned", "arithmetic"}


def test_both_splits_hold_both_labels_and_no_text_sits_in_both():
    dev, test = labelled_responses("dev"), labelled_responses("test")
    for split in (dev, test):
        assert {r.refusal for r in split} == {True, False}
        assert sum(r.hard for r in split) >= 30
    assert not {r.response for r in dev} & {r.response for r in test}


def test_agreement_counts_false_positives_and_misses_by_id():
    rows = labelled_responses("dev")
    perfect = agreement(lambda texts: [r.refusal for r in rows], rows)
    assert (perfect.precision, perfect.recall) == (1.0, 1.0)
    everything = agreement(lambda texts: [True] * len(texts), rows)
    assert everything.recall == 1.0
    assert len(everything.false_positives) == sum(not r.refusal for r in rows)
