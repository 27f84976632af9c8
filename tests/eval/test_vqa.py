"""VQAv2's answer normalisation and accuracy, and MMBench's option extraction, on cases written out."""

from __future__ import annotations

import pytest

from mmar_jax.eval import vqa


@pytest.mark.parametrize("answer, normalised", [
    ("Two", "2"),                       # number words to digits
    ("the red one", "red 1"),           # articles dropped
    ("A dog.", "dog"),                  # a full stop not between digits deleted
    ("3.5", "3.5"),                     # ... kept between digits
    ("yes!", "yes"),                    # punctuation replaced by a space, then split away
    ("black and-white", "black and white"),
    ("1,000", "1000"),                  # digit-comma-digit: punctuation deleted, not spaced
    ("dont", "don't"),                  # contractions restored
    ("  Tennis\tracket\n", "tennis racket"),
    ("none", "0"),
])
def test_normalisation_as_vqav2_does_it(answer, normalised):
  assert vqa.normalise(answer) == normalised


def test_ten_annotators_leave_one_out():
  # 2 of 10 said "red": leaving out one of them, 1 match of 9 (1/3); leaving out another, 2 (2/3):
  # (2 x 1/3 + 8 x 2/3) / 10 = 0.6. With 3 or more matches every subset holds 3: 1.
  refs = ["red", "Red."] + ["blue"] * 8
  assert vqa.vqa_accuracy("red", refs) == pytest.approx(0.6)
  assert vqa.vqa_accuracy("RED", ["red"] * 4 + ["blue"] * 6) == 1.0
  assert vqa.vqa_accuracy("green", refs) == 0.0


def test_fewer_references_one_is_exact_match():
  assert vqa.vqa_accuracy("two", ["2"]) == 1.0
  assert vqa.vqa_accuracy("three", ["2"]) == 0.0
  assert vqa.vqa_accuracy("a cat", ["cat", "dog"]) == 0.5
  with pytest.raises(ValueError, match="no reference answers"):
    vqa.vqa_accuracy("x", [])


OPTIONS = {"A": "a red circle", "B": "a blue square", "C": "a green triangle"}


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("Answer: C", "C"), ("The answer is A.", "A"),
    ("a blue square", "B"),            # no letter alone: the one option whose text it holds
    ("A or B", None),                  # two letters: ambiguous, no option
    ("purple", None),                  # neither letter nor option text
    ("BLUE SQUARE? a blue square", "B"),
])
def test_option_extraction_as_mmbench_does_it(answer, letter):
  assert vqa.choice(answer, OPTIONS) == letter


def test_the_choice_prompt_lists_the_options():
  assert vqa.choice_prompt("which?", {"A": "x", "B": "y"}, "Pick one.") == "which?\nA. x\nB. y\nPick one."
  assert vqa.choice_prompt("which?", {"A": "x"}, "") == "which?\nA. x"
