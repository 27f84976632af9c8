"""Scoring answers to questions about images: VQAv2's short-answer accuracy and MMBench's choice extraction.

Short answers (VQAv2, the official `vqaEval.py`): an answer is normalised by
1. newlines and tabs to spaces, surrounding space stripped;
2. punctuation: each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! is deleted where it touches a
   space or the text holds a digit-comma-digit, else replaced by a space; then a full stop not
   between digits is deleted (the official `periodStrip.sub("", text, re.UNICODE)` passes
   re.UNICODE as the count, so at most 32 are; kept, to score as it does);
3. lower case, number words zero..ten (and "none") to digits, the articles a, an, the dropped,
   contractions written without their apostrophe restored ("dont" -> "don't").
With 10 reference answers (VQAv2's annotators) the accuracy is the mean, over the 10 ways to leave
one annotator out, of min(1, matches among the other 9 / 3). With fewer, min(1, matches / k) over
all of them, k = min(3, references): one reference is exact match, two need both or give half. References get the same normalisation (VQAv2
normalises only their punctuation, its annotations being lower-case already; a user's are not).

Multiple choice (MMBench's `can_infer`): the option letter is read from the answer when exactly
one of the options' letters stands alone in it after . ( ) [ ] , : ; ! * # { } become spaces ("B",
"(B)", "B.", "Answer: B"); failing that, when exactly one option's text occurs in the answer
(case aside); else the answer matches no option and counts as wrong (reported as unmatched).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # The official pattern, look-behind typo included.
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "maam": "ma'am",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "shant": "shan't", "shed": "she'd",
    "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "somebodyd": "somebody'd",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed": "we'd",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_OPTION_SEPARATORS = ".()[],:;!*#{}"


def _punctuation(text: str) -> str:
  out = text
  for p in _PUNCTUATION:
    if p + " " in text or " " + p in text or _COMMA_BETWEEN_DIGITS.search(text) is not None:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out, re.UNICODE)


def _digits_and_articles(text: str) -> str:
  words = [_NUMBERS.get(w, w) for w in text.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalise(answer: str) -> str:
  """An answer as VQAv2's evaluation compares it."""
  return _digits_and_articles(_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


def vqa_accuracy(answer: str, references: Sequence[str]) -> float:
  """VQAv2's accuracy of `answer` against the human `references` (module docstring)."""
  if not references:
    raise ValueError("no reference answers")
  given = normalise(answer)
  truths = [normalise(r) for r in references]
  if len(truths) < 10:
    return min(1.0, sum(t == given for t in truths) / min(3, len(truths)))
  scores = [min(1.0, sum(t == given for j, t in enumerate(truths) if j != i) / 3) for i in range(len(truths))]
  return sum(scores) / len(scores)


def choice(answer: str, options: Mapping[str, str]) -> str | None:
  """The option letter `answer` gives (MMBench's rule, module docstring), or None when none is."""
  spaced = answer
  for c in _OPTION_SEPARATORS:
    spaced = spaced.replace(c, " ")
  words = spaced.split()
  letters = [letter for letter in options if letter in words]
  if len(letters) == 1:
    return letters[0]
  texts = [letter for letter, text in options.items() if str(text).lower() in answer.lower()]
  return texts[0] if len(texts) == 1 else None


def choice_prompt(question: str, options: Mapping[str, str], instruction: str) -> str:
  """The question, its options a line each ("A. text") and `instruction` (LLaVA's for MMBench: "Answer
  with the option's letter from the given choices directly."; empty for none)."""
  lines = [question] + [f"{letter}. {text}" for letter, text in options.items()]
  return "\n".join(lines + ([instruction] if instruction else []))
