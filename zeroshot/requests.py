"""A classification request, validated and normalized the way the transformers pipeline does."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from zeroshot.config import DEFAULT_TEMPLATE, Limits
from zeroshot.errors import (
    DuplicateLabelsError,
    EmptyLabelError,
    InvalidInputError,
    InvalidLabelsError,
    InvalidTemplateError,
    InvalidTextError,
    NoLabelsError,
    NoTextError,
    TextTooLongError,
    TooManyLabelsError,
    TooManySequencesError,
)

# The rules below as JSON Schema patterns (serve/contract.py puts them in the OpenAPI document,
# and these are what the code checks, so a request the document allows is never refused).
# A template's text: anything but braces, or braces doubled (str.format's escapes).
_TEMPLATE_TEXT = r"(?:[^{}]|\{\{|\}\})"
# The label goes where the template says `{}` (once: str.format has one label to give) or
# `{0}` (any number of times); no other replacement field, so formatting cannot fail.
TEMPLATE_PATTERN = (
    rf"^{_TEMPLATE_TEXT}*\{{\}}{_TEMPLATE_TEXT}*$"
    rf"|^(?:{_TEMPLATE_TEXT}|\{{0\}})*\{{0\}}(?:{_TEMPLATE_TEXT}|\{{0\}})*$"
)
_TEMPLATE_RE = re.compile(TEMPLATE_PATTERN)
# str.isspace's whitespace (what strip() removes), spelled out: `\s` differs between regex
# engines (ECMA's, which JSON Schema tools use, lacks U+001C-U+001F and U+0085, has U+FEFF).
_WS = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A list's label: some text that is not all whitespace.
LABEL_PATTERN = rf"[^{_WS}]"


def labels_string_pattern(max_labels: int) -> str:
    """The comma-separated form: 1 to `max_labels` pieces with text, no two the same once
    stripped (the lookahead: a piece, then later the same piece), any number of blank ones
    (dropped, the pipeline's rule) around them. tests/test_contract.py holds it to the code."""
    ws, text = f"[{_WS}]*", f"[^,{_WS}]"
    piece = rf"{ws}{text}[^,]*"
    repeat = rf"(?![\s\S]*?(?:^|,){ws}({text}[^,]*?){ws},(?:[\s\S]*,)?{ws}\1{ws}(?:,|$))"
    return rf"^{repeat}(?:{ws},)*{piece}(?:,(?:{ws},)*{piece}){{0,{max_labels - 1}}}(?:,{ws})*$"


def parse_labels(candidate_labels: str | Sequence[str] | None) -> list[str]:
    """Labels as a list, or one comma-separated string split and stripped (pipeline rule)."""
    if candidate_labels is None:
        raise NoLabelsError("candidate_labels is required: give at least one label.")
    if isinstance(candidate_labels, str):
        return [label.strip() for label in candidate_labels.split(",") if label.strip()]
    labels = list(candidate_labels)
    for label in labels:
        if not isinstance(label, str):
            raise NoLabelsError(
                f"every candidate label must be a string, got {type(label).__name__}."
            )
    return labels


def check_unicode(value: str, where: str, error: type[InvalidInputError]) -> None:
    """Refuse a lone UTF-16 surrogate (JSON allows the escape `"\\ud800"`; no tokenizer takes it).

    `isascii` is O(1) in CPython, so the usual ASCII text costs nothing here.
    """
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(
            f"{where} contains a lone UTF-16 surrogate (U+{ord(value[exc.start]):04X} at "
            f"character {exc.start}), which is not a Unicode character: send valid text "
            "(a surrogate pair escapes one character, e.g. \\ud83d\\ude00)."
        ) from None


def check_labels(labels: Sequence[str]) -> None:
    """Refuse an empty (or whitespace-only) label and a label given twice.

    A comma-separated string drops its empty pieces (the pipeline's rule), so `"a,,b"` is fine;
    a list is taken as given, so `["a", ""]` is refused rather than scored with an empty
    hypothesis. Duplicates are compared as scored (a list's labels as given, a string's pieces
    stripped), the rule JSON Schema's `uniqueItems` states: `["a", "a "]` are two labels.
    """
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        check_unicode(label, f"candidate label {i}", InvalidLabelsError)
        key = label
        if not key.strip():
            raise EmptyLabelError(
                f"candidate label {i} ({label!r}) is empty: every label needs some text."
            )
        if key in seen:
            raise DuplicateLabelsError(
                f"candidate label {key!r} is given more than once (labels {seen[key]} and {i}): "
                "give each label once (copies are scored twice and, single-label, split one score)."
            )
        seen[key] = i


def check_template(template: str) -> None:
    """Refuse a template without exactly one place for the label (TEMPLATE_PATTERN)."""
    if not _TEMPLATE_RE.fullmatch(template):
        raise InvalidTemplateError(
            f'hypothesis_template "{template}" was not able to be formatted with the target '
            "labels: it must contain {} (once) or {0} where the label goes, and no other "
            'braces unless doubled ("{{" for a literal "{"), e.g. "This example is {}."'
        )


def format_hypothesis(template: str, label: str) -> str:
    try:
        return template.format(label)
    except (IndexError, KeyError, ValueError) as exc:
        raise InvalidTemplateError(
            f'hypothesis_template "{template}" cannot be formatted with a label ({exc!r}); '
            'use {} where the label goes, e.g. "This example is {}."'
        ) from None


@dataclass(frozen=True)
class ClassificationRequest:
    """Sequences to classify against one label set, template and multi-label flag."""

    sequences: tuple[str, ...]
    labels: tuple[str, ...]
    hypothesis_template: str = DEFAULT_TEMPLATE
    multi_label: bool = False

    @classmethod
    def create(
        cls,
        sequences: str | Sequence[str],
        candidate_labels: str | Sequence[str] | None,
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
        limits: Limits | None = None,
    ) -> ClassificationRequest:
        """Validate and normalize; raises a `zeroshot.errors.InvalidInputError` subclass."""
        limits = limits or Limits()
        if isinstance(sequences, str):
            sequences = [sequences]
        elif sequences is None or isinstance(sequences, (bytes, dict)):
            raise InvalidTextError(
                f"sequences must be a string or a list of strings, got {type(sequences).__name__}."
            )
        sequences = list(sequences)
        if not sequences:
            raise NoTextError("give at least one sequence to classify.")
        if len(sequences) > limits.max_sequences:
            raise TooManySequencesError(
                f"{len(sequences)} sequences in one request; the limit is {limits.max_sequences}."
            )
        for i, text in enumerate(sequences):
            check_text(text, limits, where=f"sequence {i}" if len(sequences) > 1 else "sequence")
        labels = parse_labels(candidate_labels)
        if not labels:
            raise NoLabelsError("give at least one candidate label.")
        check_labels(labels)
        if len(labels) > limits.max_labels:
            raise TooManyLabelsError(
                f"{len(labels)} candidate labels in one request; the limit is {limits.max_labels}."
            )
        if not isinstance(hypothesis_template, str):
            raise InvalidTemplateError("hypothesis_template must be a string containing {}.")
        check_unicode(hypothesis_template, "hypothesis_template", InvalidTemplateError)
        check_template(hypothesis_template)
        return cls(tuple(sequences), tuple(labels), hypothesis_template, bool(multi_label))

    @property
    def num_pairs(self) -> int:
        return len(self.sequences) * len(self.labels)


def check_text(text: object, limits: Limits, where: str = "sequence") -> str:
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        raise InvalidTextError(f"{where} must be a string, got {kind}.")
    if not text:
        raise NoTextError(f"{where} is empty: give some text to classify.")
    if len(text) > limits.max_chars:
        raise TextTooLongError(
            f"{where} has {len(text)} characters; the limit is {limits.max_chars}."
        )
    check_unicode(text, where, InvalidTextError)
    return text
