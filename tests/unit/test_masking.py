"""Secret masking, below the stack: every secret masked, across chunk boundaries, nothing else held back."""

from __future__ import annotations

import random
import string

import pytest

from sandbox.run import Masker


def masked_stream(secrets: list[str], text: str, cut: list[int]) -> str:
    masker = Masker(secrets)
    out = []
    last = 0
    for at in [*cut, len(text)]:
        out.append(masker.feed(text[last:at]))
        last = at
    out.append(masker.flush())
    return "".join(out)


def test_a_secret_split_over_chunks_is_masked():
    assert masked_stream(["hunter2"], "pw=hunter2!", [5]) == "pw=***!"
    assert masked_stream(["hunter2"], "pw=hunter2!", [3, 4, 5, 6, 7, 8, 9]) == "pw=***!"


def test_output_that_cannot_be_a_secret_is_not_held_back():
    masker = Masker(["secret"])
    assert masker.feed("hello ") == "hello "  # nothing here starts a secret
    assert masker.feed("sec") == ""  # could be the start of one: held
    assert masker.feed("ond") == "second"
    assert masker.flush() == ""


def test_the_longest_secret_wins_where_secrets_overlap():
    assert masked_stream(["abc", "abcdef"], "xabcdefx", [2]) == "x***x"


@pytest.mark.parametrize("seed", range(200))
def test_random_streams_are_masked_as_if_whole(seed):
    rng = random.Random(seed)
    secrets = ["".join(rng.choice("ab") for _ in range(rng.randint(2, 6))) for _ in range(3)]
    text = "".join(rng.choice("abc") for _ in range(300))
    cuts = sorted(rng.sample(range(1, 300), 20))
    whole = masked_stream(secrets, text, [])
    assert masked_stream(secrets, text, cuts) == whole
    for secret in secrets:
        assert secret not in whole.replace("***", "|")


def test_no_secrets_is_a_pass_through():
    assert Masker([]).feed("".join(string.printable)) == string.printable


def test_a_secret_at_the_very_end_is_masked_even_when_it_could_start_a_longer_one():
    # "ab" is complete, but it is also how "abaaaa" begins: held back, then masked at the end.
    assert masked_stream(["ab", "abaaaa"], "xxab", []) == "xx***"
    assert masked_stream(["ab", "abaaaa"], "xxaba", [3]) == "xx***a"
