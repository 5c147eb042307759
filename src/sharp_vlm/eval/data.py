"""Video-QA records from a local JSONL file, and how a reply is scored against them.

One JSON object per line::

    {"id": "q1", "video": "clips/a.mp4", "question": "What falls?", "options": ["a cup", "a ball"], "answer": "B"}

- `video`: a path, relative to the JSONL file's folder or absolute.
- `question`: text.
- `options` (optional): a list of at least two option texts; the record is then multiple choice, options are
  lettered A, B, C, ... and `answer` is a letter or the text of one option.
- `answer`: without options, the reference text of an open question; it must keep a word after normalisation
  (below), else no reply could match it.
- `id` (optional): unique in the file; defaults to `line<N>`.

The file is UTF-8 text. Blank lines are skipped. Every problem names the file, the line and what to change.

Scoring
- Multiple choice: the predicted letter is the first option letter in the reply, read like lmms-eval's MVBench
  rule (an `A.`-style answer at the start, else the first stand-alone capital option letter, e.g. "(B)", "B:",
  "The answer is B"), after dropping a leading "answer:"-style prefix. A reply with no letter but exactly one
  option's text inside it picks that option (a model that repeats the option). Otherwise the prediction is empty
  and wrong.
- Open questions: normalised exact match. Both texts are lower-cased, punctuation becomes spaces, the articles
  a/an/the are dropped and runs of white space collapse to one; the reply is correct when the results are equal.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import DataError, text_lines

LETTERS = string.ascii_uppercase
_FIELDS = {"id", "video", "question", "options", "answer"}


@dataclass(frozen=True)
class QARecord:
    """One question about one video. `options` is None for an open question."""

    id: str
    video: Path
    question: str
    answer: str
    options: tuple[str, ...] | None = None
    line: int = 0

    @property
    def kind(self) -> str:
        return "open" if self.options is None else "mc"

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options or ())]

    @property
    def answer_key(self) -> str:
        """The reference in the form predictions take: a letter (multiple choice) or the normalised text."""
        if self.options is None:
            return normalize_text(self.answer)
        return _answer_letter(self.answer, self.options) or ""


def _answer_letter(answer: str, options: tuple[str, ...]) -> str | None:
    text = answer.strip()
    bare = text.strip("().: ").upper()
    if len(bare) == 1 and bare in LETTERS[: len(options)]:
        return bare
    norm = normalize_text(text)
    hits = [i for i, option in enumerate(options) if normalize_text(option) == norm]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def _record(obj: Any, line: int, where: str, base: Path) -> QARecord:
    def bad(what: str) -> DataError:
        return DataError(f"{where}:{line}: {what}")

    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise bad(f"unknown field(s) {unknown}; the fields are {sorted(_FIELDS)}")
    for name in ("video", "question", "answer"):
        if name not in obj:
            raise bad(f"missing field {name!r}")
        if not isinstance(obj[name], str) or not obj[name].strip():
            raise bad(f"field {name!r} must be a non-empty string, got {obj[name]!r}")
    rid = obj.get("id", f"line{line}")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)  # numeric ids are common in benchmark dumps
    if not isinstance(rid, str) or not rid:
        raise bad(f"field 'id' must be a non-empty string or an integer, got {rid!r}")
    options = obj.get("options")
    if options is not None:
        if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
            raise bad("field 'options' must be a list of non-empty strings")
        if not 2 <= len(options) <= len(LETTERS):
            raise bad(f"field 'options' has {len(options)} entries; give between 2 and {len(LETTERS)}")
        options = tuple(options)
        if _answer_letter(obj["answer"], options) is None:
            raise bad(
                f"answer {obj['answer']!r} is neither an option letter ({LETTERS[0]}-{LETTERS[len(options) - 1]}) "
                "nor the text of exactly one option"
            )
    elif not normalize_text(obj["answer"]):
        raise bad(f"answer {obj['answer']!r} has no word left once normalised (lower case, no punctuation, no "
                  "a/an/the), so no reply could ever match it; give the reference answer in words")
    video = Path(obj["video"]).expanduser()
    if not video.is_absolute():
        video = base / video
    return QARecord(id=rid, video=video, question=obj["question"], answer=obj["answer"], options=options, line=line)


def load_records(path: str | Path) -> list[QARecord]:
    """Parse the JSONL file; raise `DataError` naming the first malformed line, or a repeated id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a JSONL file with one question per line")
    records: list[QARecord] = []
    seen: dict[str, int] = {}
    base = path.absolute().parent  # absolute video paths: the same file named two ways gives the same records
    for line, text in enumerate(text_lines(path), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line}: not valid JSON ({err.msg} at column {err.colno})") from None
        rec = _record(obj, line, str(path), base)
        if rec.id in seen:
            raise DataError(f"{path}:{line}: id {rec.id!r} repeats line {seen[rec.id]}; ids must be unique")
        seen[rec.id] = line
        records.append(rec)
    if not records:
        raise DataError(f"{path} holds no records")
    return records


def check_videos(records: list[QARecord], source: str | Path = "") -> None:
    """Raise one `DataError` listing every record whose video file is missing (before any model work)."""
    missing = [r for r in records if not r.video.is_file()]
    if not missing:
        return
    shown = "\n".join(f"  line {r.line} (id {r.id}): {r.video}" for r in missing[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    where = f" in {source}" if source else ""
    raise DataError(
        f"{len(missing)} of {len(records)} video files{where} do not exist:\n{shown}{more}\n"
        "fix the paths (relative paths are read from the JSONL file's folder) or remove those lines"
    )


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(rf"[{re.escape(string.punctuation)}]")


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, articles a/an/the dropped, white space collapsed."""
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


_PREFIX = re.compile(
    r"^\s*(?:the\s+)?(?:best\s+|correct\s+|final\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:：]?\s*", re.IGNORECASE
)


def extract_choice(reply: str, options: tuple[str, ...]) -> str:
    """The option letter a multiple-choice reply gives, or "" (see the module doc for the rule)."""
    letters = LETTERS[: len(options)]
    text = _PREFIX.sub("", reply.strip(), count=1).strip()
    start = re.match(rf"^\(?([{letters}])(?:[).:,\s]|$)", text)
    if start:
        return start.group(1)
    anywhere = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text)
    if anywhere:
        return anywhere.group(1)
    norm = normalize_text(reply)
    hits = [i for i, option in enumerate(options) if normalize_text(option) and normalize_text(option) in norm]
    return letters[hits[0]] if len(hits) == 1 else ""


def score(record: QARecord, reply: str) -> tuple[str, bool]:
    """(prediction, correct): a letter for multiple choice, the normalised reply for an open question."""
    pred = normalize_text(reply) if record.options is None else extract_choice(reply, record.options)
    return pred, bool(pred) and pred == record.answer_key
