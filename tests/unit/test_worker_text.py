"""Prefilter normalization, rationale markup, similarity and triples."""

from __future__ import annotations

import pytest

from services.worker.text import normalize, parse_markup, similarity, triples

pytestmark = pytest.mark.unit

DOC = "Tom has 3 apples. He buys 5 more. Now he has 8 apples."


def test_worker_normalize_drops_case_punctuation_and_stopwords() -> None:
    assert normalize("The Cat, it sat ON the mat!") == "cat sat mat"
    assert normalize("Don't stop: 3 + 4 = 7.") == "stop 3 4 7"


def test_worker_parse_markup_finds_rationales_and_plain_text() -> None:
    m = parse_markup("A. <BOT>why<EOT> B. <BOT> next <EOT>C.")
    assert m.text == "A.  B. C."
    assert m.rationales == [(3, "why"), (7, "next")]


def test_worker_parse_markup_unterminated_rationale_cuts_the_rest() -> None:
    m = parse_markup("A. <BOT>why<EOT> B. <BOT>cut off by max_tokens")
    assert m.text == "A.  B. "
    assert m.rationales == [(3, "why")]
    assert parse_markup("stray<EOT> marker").text == "stray marker"


def test_worker_similarity_ignores_whitespace_left_by_removed_rationales() -> None:
    assert similarity("A.  B.", "A. B.") == 1.0
    assert 0.8 < similarity("Tom has 3 apples.", "Tom has 4 apples.") < 1.0
    assert similarity("", "") == 1.0


def test_worker_triples_are_spans_of_the_original() -> None:
    out = (
        "Tom has 3 apples. <BOT>Add what he buys.<EOT> He buys 5 more. <BOT>3 + 5.<EOT> "
        "Now he has 8 apples."
    )
    found = triples(DOC, parse_markup(out))
    assert [t.rationale for t in found] == ["Add what he buys.", "3 + 5."]
    for t in found:
        assert DOC.startswith(t.preceding + t.following)
        assert t.preceding == DOC[: t.start] and t.following == DOC[t.start : t.end]
    assert found[0].preceding.strip() == "Tom has 3 apples."
    assert found[1].following.strip() == "Now he has 8 apples."


def test_worker_triples_come_from_the_original_when_the_copy_differs() -> None:
    out = "Tom has three apples. <BOT>Add.<EOT> He buys 5 more! Now he has 8 apples."
    (t,) = triples(DOC, parse_markup(out))
    assert t.preceding.strip() == "Tom has 3 apples."
    assert t.following.strip() == "He buys 5 more. Now he has 8 apples."


def test_worker_triples_drop_empty_fields() -> None:
    assert triples(DOC, parse_markup("<BOT>nothing before<EOT>" + DOC)) == []
    assert triples(DOC, parse_markup(DOC + " <BOT>nothing after<EOT>")) == []
    assert triples(DOC, parse_markup("Tom has 3 apples. <BOT> <EOT>He buys...")) == []


def test_worker_repeats_catches_copies_and_reordered_restatements() -> None:
    from services.worker.text import repeats

    following = "You cannot earn an academic degree if you drop out of the program."
    for answer in (
        following.upper(),
        f"So: {following}",
        "If you drop out of the program, you cannot earn an academic degree.",
    ):
        assert repeats(answer, following, max_similarity=0.8), answer
    assert not repeats("Finishing the program is what earns the degree.", following,
                       max_similarity=0.8)  # fmt: skip
    assert not repeats("Say yes.", "Yes, yes.", max_similarity=0.8)  # too few content words
