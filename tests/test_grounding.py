"""Grounding without the model: the finder on messages as people type them, factual
questions and their catalog answers, follow-ups ("who directed it?"), and the check
that repairs or drops sentences contradicting the catalog."""

from __future__ import annotations

import pytest

from bot.grounding.check import ReplyCheck, sentence_ends
from bot.grounding.finder import Finder
from bot.grounding.questions import read_question
from bot.grounding.service import answer_question, facts_text, ground, seeded_request
from bot.media.catalog import Catalog, Title
from memory.records import Turn


@pytest.fixture(scope="module")
def finder(catalog: Catalog) -> Finder:
    return Finder.of(catalog)


def one(finder: Finder, name: str) -> Title:
    titles = finder.titles_named(name)
    assert titles, name
    return titles[0]


# (message, titles found, people found); titles by name, as the catalog writes them.
FINDS: list[tuple[str, list[str], list[str]]] = [
    ("Who directed Okja?", ["Okja"], []),
    ("What year did Jaws come out?", ["Jaws"], []),
    ("have you seen strnger things?", ["Stranger Things"], []),  # a typo, lower case
    ("have you seen STRANGER THINGS", ["Stranger Things"], []),
    ("kill bill is a great movie, what else is like it?", ["Kill Bill: Vol. 1"], []),
    ("I loved Dark, what next?", ["Dark"], []),  # an ordinary word, capitalised
    ("i loved dark, what next?", ["Dark"], []),  # ... or right after "loved"
    ("tell me about breaking bad", ["Breaking Bad"], []),
    ("who directed irishman", ["The Irishman"], []),  # without "The"
    ("have you seen inceptoin", ["Inception"], []),
    ("I watched Her last night", ["Her"], []),
    ("what else has spielberg directed?", [], ["Steven Spielberg"]),  # a surname alone
    ("Tilda Swinton is great", [], ["Tilda Swinton"]),
    # Ordinary words that are titles somewhere in the catalog: not mentions here.
    ("I'm going up the stairs with her", [], []),
    ("the end of the day was dark and deep", [], []),
    ("good night everyone, see you tomorrow", [], []),
    ("my friends and I watched a movie at the office", [], []),
    ("I love this song so much", [], []),
    ("Dark clouds again today", [], []),  # a sentence's first word is not a name
    ("", [], []),
]


@pytest.mark.parametrize(("message", "titles", "people"), FINDS)
def test_the_finder_reads_messages_as_people_type_them(
    finder: Finder, message: str, titles: list[str], people: list[str]
) -> None:
    found = finder.find(message)
    assert [t.title for t in found.titles] == titles
    assert found.people == people


def test_a_name_of_several_titles_finds_them_all_the_first_of_a_series_first(
    finder: Finder,
) -> None:
    mention = finder.find("what else is like kill bill").mentions[0]
    assert [t.title for t in mention.titles] == ["Kill Bill: Vol. 1", "Kill Bill: Vol. 2"]


def test_model_text_counts_capitalised_names_only(finder: Finder) -> None:
    # The reply's first word is a name when it is capitalised and not a common word.
    assert [t.title for t in finder.find("Okja is lovely.", cased=True).titles] == ["Okja"]
    assert finder.find("okja is lovely and jaws too.", cased=True).titles == []
    assert finder.find("Her smile is lovely.", cased=True).titles == []


def test_the_finder_is_built_once_per_catalog(catalog: Catalog) -> None:
    assert Finder.of(catalog) is Finder.of(catalog)
    other = Catalog(list(catalog.titles.values())[:50])
    assert Finder.of(other) is not Finder.of(catalog)


QUESTIONS = [
    ("Who directed Okja?", "director", "Okja"),
    ("when did Jaws come out?", "year", "Jaws"),
    ("what year was Jaws released?", "year", "Jaws"),
    ("who is in the crown?", "cast", "the crown"),
    ("what genre is dark?", "genre", "dark"),
    ("is it scary?", "is_genre", "it"),
    ("how long is okja", "runtime", "okja"),
    ("how many seasons does dark have?", "runtime", "dark"),
    ("is Dark a film or a show?", "type", "Dark"),
    ("what is Okja rated?", "rating", "Okja"),
    ("where is okja from?", "country", "okja"),
    ("what else has Bong Joon Ho directed?", "works", "Bong Joon Ho"),
    ("what else did he make?", "works", "he"),
    ("films by spielberg", "works", "spielberg"),
]


@pytest.mark.parametrize(("message", "ask", "slot"), QUESTIONS)
def test_factual_questions_are_read(message: str, ask: str, slot: str) -> None:
    question = read_question(message)
    assert question is not None and (question.ask, question.slot) == (ask, slot)


@pytest.mark.parametrize(
    "message", ["what is the weather like?", "I think it is lovely", "hello there", ""]
)
def test_chat_is_not_a_question_about_a_title(message: str) -> None:
    assert read_question(message) is None


# (message, words the catalog answer must hold)
ANSWERS = [
    ("Who directed Okja?", ["Bong Joon Ho", "2017"]),
    ("What year did Jaws come out?", ["1975"]),
    ("Who directed Jaws?", ["Steven Spielberg"]),
    ("who is in the crown?", ["Claire Foy"]),
    ("what genre is Okja?", ["Action & Adventure"]),
    ("how long is okja", ["121 min"]),
    ("how many seasons does dark have", ["3 seasons"]),
    ("is Dark a film or a show?", ["TV show"]),
    ("what's Stranger Things rated?", ["TV-14"]),
    ("where is okja from?", ["South Korea"]),
    ("who directed Inceptoin?", ["Christopher Nolan"]),  # a typo in the title
    ("who directed kill bill?", ["Quentin Tarantino", "Vol. 1"]),
    ("what has Tilda Swinton been in?", ["Okja (2017)", "Snowpiercer (2013)"]),
    ("films by spielberg", ["Steven Spielberg", "Lincoln (2012)"]),
    ("Is Stranger Things scary?", ["Yes", "TV Horror"]),
    ("Is Okja a comedy?", ["Yes"]),
    ("is Jaws a documentary?", ["Not by my catalog"]),
]


@pytest.mark.parametrize(("message", "expected"), ANSWERS)
def test_factual_answers_come_from_the_catalog(
    finder: Finder, message: str, expected: list[str]
) -> None:
    text = answer_question(finder.catalog, ground(finder, message, []))
    assert text is not None
    for word in expected:
        assert word in text, (word, text)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("When was Was It Love? released?", "2020"),
        ("who is in Take the Ball, Pass the Ball?", "Take the Ball, Pass the Ball (2018"),
        ("What genre is LSD: Love, Sex Aur Dhokha?", "LSD: Love, Sex Aur Dhokha (2010"),
        ("When was best.worst.weekend.ever. released?", "2018"),
        ("How many seasons does Perfume have?", "Perfume (2018 TV show) has"),
        ("Who directed ¡ay, mi madre!?", "¡Ay, mi madre! (2019 film) was directed by"),
    ],
)
def test_a_title_with_its_own_punctuation_is_asked_about_whole(
    finder: Finder, message: str, expected: str
) -> None:
    text = answer_question(finder.catalog, ground(finder, message, []))
    assert text is not None and expected in text, text


def test_a_name_read_as_a_misspelling_is_answered_as_a_guess_that_says_so(
    finder: Finder,
) -> None:
    # The catalog has Emelie (2016), not Amélie: the answer must not read as Amélie's.
    guess = answer_question(finder.catalog, ground(finder, "When did Amelie come out?", []))
    assert guess is not None, guess
    assert guess.startswith("I don't have “Amelie” in my catalog. Did you mean Emelie"), guess
    assert "If so: Emelie" in guess and "2016" in guess
    typo = answer_question(finder.catalog, ground(finder, "who directed Inceptoin?", []))
    assert typo is not None and "Did you mean Inception" in typo, typo
    # Spelt right (any case), the answer is plain.
    plain = answer_question(finder.catalog, ground(finder, "who directed inception?", []))
    assert plain is not None and "Did you mean" not in plain and "Christopher Nolan" in plain


def test_a_title_the_catalog_lacks_gets_an_honest_miss_with_did_you_mean(
    finder: Finder,
) -> None:
    miss = answer_question(finder.catalog, ground(finder, "who directed the godfather?", []))
    assert miss is not None and "don't have “the godfather” in my catalog" in miss
    assert "Did you mean “The Black Godfather”" in miss and "The Other" not in miss
    far = answer_question(finder.catalog, ground(finder, "When did Zorblax Nine come out?", []))
    assert far is not None and "don't have “Zorblax Nine”" in far and "Did you mean" not in far
    for text in (miss, far):
        assert not any(str(year) in text for year in range(1900, 2030))


def test_a_question_that_is_not_about_a_title_is_left_to_chat(finder: Finder) -> None:
    for message in ("who is in the mood for pizza?", "who is in the mood?"):
        assert answer_question(finder.catalog, ground(finder, message, [])) is None


def turn(role: str, text: str) -> Turn:
    return Turn(role=role, text=text, time=0.0, tokens=len(text.split()))  # type: ignore[arg-type]


def test_follow_ups_resolve_against_the_last_exchanges(finder: Finder) -> None:
    history: list[Turn] = []
    said = []
    for message in [
        "Who directed Okja?",
        "when did it come out?",
        "what else did he make?",
        "how long is it?",
    ]:
        grounded = ground(finder, message, history)
        text = answer_question(finder.catalog, grounded)
        assert text is not None
        said.append(text)
        history += [turn("user", message), turn("assistant", text)]
    assert "Bong Joon Ho" in said[0]
    assert "2017" in said[1]  # "it" is Okja
    assert "Snowpiercer" in said[2] and "Okja" not in said[2]  # "he", and "else"
    assert "126 min" in said[3]  # "it" is now Snowpiercer, the one title just named


def test_an_ordinal_picks_from_the_last_list(finder: Finder) -> None:
    history = [
        turn("user", "something like Okja"),
        turn("assistant", "1. **Snowpiercer** (2013): fine.\n2. **Jaws** (1975): also."),
    ]
    second = ground(finder, "who directed the second one?", history)
    assert [t.title for t in second.titles] == ["Jaws"]
    # "it" after a list means what the member named.
    it = ground(finder, "who directed it?", history)
    assert [t.title for t in it.titles] == ["Okja"]


def test_it_without_a_title_in_sight_asks_which(finder: Finder) -> None:
    text = answer_question(finder.catalog, ground(finder, "who directed it?", []))
    assert text is not None and text.startswith("Which title do you mean?")


def test_it_in_small_talk_is_not_a_follow_up(finder: Finder) -> None:
    history = [turn("user", "Who directed Okja?"), turn("assistant", "Okja was directed…")]
    assert ground(finder, "it is raining here today", history).titles == ()


def test_facts_hold_what_the_catalog_gives(finder: Finder) -> None:
    okja = one(finder, "Okja")
    text = facts_text(finder.catalog, [okja], ["Bong Joon Ho"])
    assert text.startswith("Catalog facts")
    for fact in ("Okja (film, 2017)", "Bong Joon Ho", "Tilda Swinton", "121 min", "TV-MA",
                 "South Korea", "Snowpiercer (2013)"):  # fmt: skip
        assert fact in text
    assert facts_text(finder.catalog, [], []) == ""


@pytest.mark.parametrize(
    ("message", "seeded"),
    [
        ("Hi! What should I watch tonight if I liked Okja?", True),
        ("I loved Dark, what next?", True),
        ("what else is like Kill Bill?", True),
        ("something scary like Stranger Things", True),
        ("kill bill is a great movie, what else is like it?", True),
        ("I like pizza", False),
        ("Who directed Okja?", False),
    ],
)
def test_requests_for_titles_like_a_named_one(message: str, seeded: bool) -> None:
    assert seeded_request(message) is seeded


# (focus title, model sentence, what is shown: the repaired sentence, or None: dropped)
CHECKS: list[tuple[str | None, str, str | None]] = [
    ("Okja", "Okja was directed by Bjb Joon Ho in 2017.",
     "Okja was directed by Bong Joon Ho in 2017."),
    ("Okja", "Okja is directed by the Japanese filmmaker Akira Kurosura.",
     "Okja is directed by Bong Joon Ho."),
    ("Jaws", "The actual release date of Jaws was actually 2015.",
     "The actual release date of Jaws was actually 1975."),
    ("Jaws", "Jaws is the film by Christopher Nolan that was released on June 20th, 2012.",
     "Jaws is the film by Steven Spielberg that was released in 1975."),
    ("Okja", "Okja stars Tilda Swinton and Tom Hanks.", "Okja stars Tilda Swinton."),
    ("Okja", "It is a 2019 Japanese horror-drama film about survivors.", None),
    ("Okja", "It premiered on March 3rd at a festival.", None),
    ("Okja", "Okja is a scary movie about a pig.", None),  # Okja is not filed as horror
    # Seen in a fresh clone's first chat, after "Who directed Okja?": "What is it about?"
    ("Okja", "The film features a female lead, a woman named Erikka Vuijensko, as the star "
             "of a production company.", None),
    ("Okja", "Okja features Tilda Swinton and Tom Hanks.", "Okja features Tilda Swinton."),
    ("Okja", "It follows a girl called Mija and her friend.", None),
    ("Stranger Things", "Stranger Things is a scary show.", "Stranger Things is a scary show."),
    (None, "Have you seen *The Last Journey of Bob*?", None),
    (None, "I'm Sarah, the AI here to help with your film projects.", None),
    (None, "I've been working on my latest series about the internet.", None),
    (None, "I watched it last week and loved it.", None),
    # Kept as they are: what the catalog gives, and what is about no title.
    ("Okja", "Okja (2017) was directed by Bong Joon Ho.",
     "Okja (2017) was directed by Bong Joon Ho."),
    ("Okja", "It stars Tilda Swinton and Paul Dano.", "It stars Tilda Swinton and Paul Dano."),
    ("Okja", "It features Tilda Swinton as a CEO named Tilda Swinton.",
     "It features Tilda Swinton as a CEO named Tilda Swinton."),
    ("Okja", "It is a film called Okja.", "It is a film called Okja."),
    (None, "Jaws came out in 1975, long before Okja.", "Jaws came out in 1975, long before Okja."),
    (None, "I'm glad you asked, and I'm mediabot.", "I'm glad you asked, and I'm mediabot."),
    (None, "Kill Bill: Vol. 1 came out in 2003.", "Kill Bill: Vol. 1 came out in 2003."),
    (None, "In 2025 I hope for more sci-fi.", "In 2025 I hope for more sci-fi."),
]  # fmt: skip


@pytest.mark.parametrize(("focus", "sentence", "shown"), CHECKS)
def test_the_check_repairs_or_drops_what_contradicts_the_catalog(
    finder: Finder, focus: str | None, sentence: str, shown: str | None
) -> None:
    check = ReplyCheck(finder, [one(finder, focus)] if focus else [])
    assert check.review(sentence).text == shown


def test_the_check_works_on_a_stream_and_shows_only_what_passed(finder: Finder) -> None:
    reply = (
        "I'm Sarah, the AI here to help. Okja was directed by Akira Kurosura in 2019. "
        "It follows a girl and her giant pig. What did you think of it?"
    )
    check = ReplyCheck(finder, [one(finder, "Okja")])
    shown = "".join(check.feed(reply[i : i + 7]) for i in range(0, len(reply), 7))
    shown += check.finish()
    assert shown == check.shown
    assert shown == (
        "Okja was directed by Bong Joon Ho in 2017. It follows a girl and her giant pig. "
        "What did you think of it?"
    )
    assert len(check.dropped) == 1 and len(check.repaired) == 1


def test_sentences_end_at_stops_not_at_volumes_or_initials() -> None:
    text = "Kill Bill: Vol. 1 is by Quentin Tarantino. J. J. Abrams made it! Yes? "
    ends = sentence_ends(text)
    assert [text[:e].strip()[-6:] for e in ends] == ["ntino.", "de it!", "! Yes?"]
