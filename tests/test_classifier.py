"""The offensive-language classifier: its false-positive rate on media talk (every
title of the default catalog, and ordinary questions) at the shipped thresholds, that
it still catches abuse, title masking, and the optional Hugging Face layer."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bot.moderation.classifier import HFScorer, OffensiveClassifier, TitleMask, sentences
from bot.moderation.policy import GuildPolicy
from bot.moderation.rules import normalise
from bot.settings import DEFAULT_TITLES, ModerationSettings

DATA = Path(__file__).parent / "data" / "moderation"
STANDARD = ModerationSettings.model_fields["standard_threshold"].default
STRICT = ModerationSettings.model_fields["strict_threshold"].default
MAX_FALSE_POSITIVES = 0.01  # stated in docs/moderation.md


def lines(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def catalog_titles() -> list[str]:
    with DEFAULT_TITLES.open(newline="", encoding="utf-8") as fh:
        return [row["title"] for row in csv.DictReader(fh)]


def test_the_policy_defaults_are_the_settings_defaults() -> None:
    assert GuildPolicy().standard_threshold == STANDARD == 0.90
    assert GuildPolicy().strict_threshold == STRICT == 0.75


@pytest.mark.parametrize("threshold", [STANDARD, STRICT], ids=["standard", "strict"])
def test_false_positives_on_every_catalog_title_stay_under_one_percent(
    classifier: OffensiveClassifier, threshold: float
) -> None:
    titles = catalog_titles()
    assert len(titles) == 8807
    flagged = [
        t for t, s in zip(titles, classifier.score_many(titles), strict=True) if s >= threshold
    ]
    rate = len(flagged) / len(titles)
    # Measured: standard 4 titles (0.05%), strict 7 (0.08%); one-word titles such as
    # "Bitch" are not masked, since masking them would hide the insult itself.
    assert rate < MAX_FALSE_POSITIVES, flagged
    assert len(flagged) <= 10, flagged


@pytest.mark.parametrize("threshold", [STANDARD, STRICT], ids=["standard", "strict"])
def test_ordinary_media_questions_are_not_flagged(
    classifier: OffensiveClassifier, threshold: float
) -> None:
    questions = lines("ordinary_questions.txt")
    assert len(questions) >= 150
    flagged = [
        q
        for q, s in zip(questions, classifier.score_many(questions), strict=True)
        if s >= threshold
    ]
    assert len(flagged) / len(questions) < MAX_FALSE_POSITIVES, flagged


@pytest.mark.parametrize("threshold", [STANDARD, STRICT], ids=["standard", "strict"])
def test_abuse_is_still_caught_at_the_shipped_thresholds(
    classifier: OffensiveClassifier, threshold: float
) -> None:
    abusive = lines("abusive.txt")
    caught = [
        a for a, s in zip(abusive, classifier.score_many(abusive), strict=True) if s >= threshold
    ]
    assert len(caught) >= 0.95 * len(abusive), set(abusive) - set(caught)


def test_without_the_title_mask_violent_titles_would_be_flagged(
    classifier: OffensiveClassifier,
) -> None:
    unmasked = OffensiveClassifier(classifier.scorers, mask=None)
    question = "Is Kill la Kill related to Kill Bill?"
    assert unmasked.score(question) >= STANDARD  # what the mask is for
    assert classifier.score(question) < STANDARD


def test_one_word_titles_are_not_masked_so_insults_stay_visible(
    classifier: OffensiveClassifier,
) -> None:
    assert classifier.mask is not None and len(classifier.mask) > 5000
    assert classifier.mask.remove(normalise("you bitch")) == "you bitch"
    assert classifier.score("shut up you bitch") >= STANDARD


def test_an_insult_inside_a_long_friendly_message_is_not_diluted(
    classifier: OffensiveClassifier,
) -> None:
    friendly = "I watched a lot of films this week and most of them were lovely. " * 30
    assert classifier.score(friendly) < STRICT
    assert classifier.score(friendly + "You are a worthless fucking idiot.") >= STANDARD


def test_masking_takes_the_longest_title_and_leaves_the_rest() -> None:
    mask = TitleMask(["Die Hard", "Die Hard with a Vengeance", "Up"])
    assert mask.remove("is die hard with a vengeance good") == "is good"
    assert mask.remove("die hard or up") == "or up"


def test_sentences_cover_long_text_in_overlapping_windows() -> None:
    words = [f"w{i}" for i in range(100)]
    pieces = sentences(" ".join(words))
    covered = {w for p in pieces for w in p.split()}
    assert covered == set(words)
    assert all(len(p.split()) <= 40 for p in pieces)
    assert sentences("One. Two!\nThree?") == ["One.", "Two!", "Three?"]


def test_leetspeak_and_spacing_tricks_do_not_hide_abuse(
    classifier: OffensiveClassifier,
) -> None:
    assert classifier.score("you are a stup1d 1d10t") >= STANDARD
    assert classifier.score("ｙｏｕ ａｒｅ ａ ｓｔｕｐｉｄ ｉｄｉｏｔ") >= STANDARD


def _tiny_text_classifier(path: Path) -> Path:
    """A real (randomly initialised) BERT sequence classifier with its own tokenizer,
    saved as an admin would provide one: exercises the real transformers pipeline."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "you", "are", "an", "idiot", "film"]
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=2,
        id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1},
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(path))
    return path


def test_a_local_hugging_face_model_adds_a_layer(tmp_path: Path) -> None:
    model_dir = _tiny_text_classifier(tmp_path / "toxicity")
    scorer = HFScorer(model_dir, ["toxic"])
    scores = scorer.scores(["you are an idiot", "film"])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)

    # The layer only adds: a text is as bad as its worst score under any scorer.
    class Fixed:
        def scores(self, texts: object) -> list[float]:
            return [0.99]

    combined = OffensiveClassifier([scorer, Fixed()])
    assert combined.score("film") == pytest.approx(0.99)
    with pytest.raises(ValueError, match="none of the labels"):
        HFScorer(model_dir, ["hateful"])


def test_the_model_directory_setting_is_checked(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a model directory"):
        ModerationSettings(hf_model_path=tmp_path)
