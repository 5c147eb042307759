"""`records.jsonl` of an evaluation folder: one JSON line per answered (sample, variant), read back on resume.

Only the last line can be cut off (a run killed while appending it); it is not counted, and `prepare_append`
(called under the folder's lock) drops it by an atomic rewrite, so its pair is asked again. Any other line that is
not a record is an error naming it. The score stored in a line is the one given when it was answered; `rescored`
scores the stored reply again against the data file as it is now (the reply does not depend on the reference).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .data import QARecord, score
from .files import DataError, atomic_write, text_lines

RECORDS = "records.jsonl"
_TEXT = ("id", "variant", "reply")
_NUMBER = ("n_visual", "n_kept", "prefill_s")
_NUMBER_OR_NULL = ("kept_ratio", "flops", "flops_dense")
_JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}

Key = tuple[str, str]


def _problem(obj: Any) -> str | None:
    """Why a parsed line is not a record, or None."""
    if not isinstance(obj, dict):
        return f"a JSON {_JSON_KINDS.get(type(obj), 'number')}, not an object"
    for name in _TEXT:
        if not isinstance(obj.get(name), str):
            return f"no text field {name!r}" if name not in obj else f"field {name!r} is {obj[name]!r}, not text"
    for name in (*_NUMBER, *_NUMBER_OR_NULL):
        value = obj.get(name)
        if name not in obj or (value is None and name in _NUMBER) or (
                value is not None and (isinstance(value, bool) or not isinstance(value, int | float))):
            return f"field {name!r} is missing or not a number"
    return None


def _scan(path: Path) -> tuple[dict[Key, dict[str, Any]], list[str], bool]:
    """(records by key, the lines before a torn last line, whether the last line is torn)."""
    lines = text_lines(path, last_may_be_cut=True)
    last = max((i for i, text in enumerate(lines) if text.strip()), default=-1)
    done: dict[Key, dict[str, Any]] = {}
    for i, text in enumerate(lines):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            if i == last:
                return done, lines[:i], True
            raise DataError(f"{path}:{i + 1}: not valid JSON ({err.msg} at column {err.colno}); delete that line "
                            "to resume (its answer is asked again)") from None
        problem = _problem(obj)
        if problem is not None:
            raise DataError(f"{path}:{i + 1}: not a record ({problem}); delete that line to resume "
                            "(its answer is asked again)")
        done[(obj["id"], obj["variant"])] = obj  # the last line for a key wins
    return done, lines, False


def read_records(out: str | Path) -> dict[Key, dict[str, Any]]:
    """Finished records by (sample id, variant key), without changing the file; a torn last line is not counted."""
    path = Path(out) / RECORDS
    return _scan(path)[0] if path.is_file() else {}


def prepare_append(out: Path) -> dict[Key, dict[str, Any]]:
    """`read_records`, and make the file ready to append to: a torn last line is dropped (written to a temporary
    file, flushed, renamed over the old one: a kill on the way leaves the old file whole), and a last line
    without its line break gets one. Call it holding the folder's lock."""
    path = out / RECORDS
    if not path.is_file():
        return {}
    done, kept, torn = _scan(path)
    if torn:
        atomic_write(path, "".join(line + "\n" for line in kept if line.strip()))
    elif not _ends_a_line(path):
        with path.open("a", encoding="utf-8") as fh:  # else the next record would join the last line
            fh.write("\n")
    return done


def _ends_a_line(path: Path) -> bool:
    """True when `path` is empty or its last byte is a line break."""
    with path.open("rb") as fh:
        if fh.seek(0, 2) == 0:
            return True
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


def rescored(line: dict[str, Any], record: QARecord) -> dict[str, Any]:
    """`line` with its prediction, reference and correctness computed again from its stored reply and `record`."""
    pred, correct = score(record, line["reply"])
    return {**line, "pred": pred, "answer": record.answer_key, "correct": correct}
