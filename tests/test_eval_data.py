"""Evaluation records: parsing with line-numbered errors, missing videos, answer extraction and scoring."""

import json

import pytest

from sharp_vlm.eval.data import (
    DataError,
    QARecord,
    check_videos,
    extract_choice,
    load_records,
    normalize_text,
    score,
)


def _write(tmp_path, lines):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_records_resolve_paths_letters_and_ids(tmp_path):
    path = _write(tmp_path, [
        {"id": "a", "video": "v/a.mp4", "question": "q?", "options": ["red", "blue"], "answer": "B"},
        "",
        {"video": "/abs/b.mp4", "question": "q?", "options": ["red", "blue"], "answer": "red"},
        {"id": 7, "video": "c.mp4", "question": "what?", "answer": "The Cat."},
    ])
    a, b, c = load_records(path)
    assert a.video == tmp_path / "v" / "a.mp4" and a.kind == "mc" and a.answer_key == "B"
    assert b.id == "line3" and str(b.video) == "/abs/b.mp4" and b.answer_key == "A"
    assert c.id == "7" and c.kind == "open" and c.answer_key == "cat"


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    ({"video": "a.mp4", "answer": "x"}, "missing field 'question'"),
    ({"video": "a.mp4", "question": "", "answer": "x"}, "'question' must be a non-empty string"),
    ({"video": "a.mp4", "question": "q", "answer": "x", "vid": 1}, "unknown field(s) ['vid']"),
    ({"video": "a.mp4", "question": "q", "answer": "x", "options": "ab"}, "list of non-empty strings"),
    ({"video": "a.mp4", "question": "q", "answer": "A", "options": ["only"]}, "has 1 entries"),
    ({"video": "a.mp4", "question": "q", "answer": "C", "options": ["x", "y"]}, "neither an option letter (A-B)"),
    ({"video": "a.mp4", "question": "q", "answer": "z", "id": []}, "'id' must be"),
])
def test_a_malformed_record_names_its_line(tmp_path, line, message):
    path = _write(tmp_path, [{"video": "a.mp4", "question": "q", "answer": "x"}, line])
    with pytest.raises(DataError) as err:
        load_records(path)
    assert f"{path}:2:" in str(err.value) and message in str(err.value)


def test_repeated_ids_empty_and_missing_files(tmp_path):
    rec = {"id": "x", "video": "a.mp4", "question": "q", "answer": "y"}
    with pytest.raises(DataError, match=r":2: id 'x' repeats line 1"):
        load_records(_write(tmp_path, [rec, rec]))
    with pytest.raises(DataError, match="holds no records"):
        load_records(_write(tmp_path, ["", " "]))
    with pytest.raises(DataError, match="does not exist; give a JSONL"):
        load_records(tmp_path / "nope.jsonl")


def test_missing_videos_are_listed_together(tmp_path):
    (tmp_path / "here.mp4").write_bytes(b"x")
    recs = [QARecord(id=str(i), video=tmp_path / name, question="q", answer="a", line=i + 1)
            for i, name in enumerate(["here.mp4", "gone1.mp4", "gone2.mp4"])]
    check_videos(recs[:1])
    with pytest.raises(DataError) as err:
        check_videos(recs, "qa.jsonl")
    text = str(err.value)
    assert "2 of 3 video files in qa.jsonl" in text and "line 2 (id 1)" in text and "gone2.mp4" in text
    assert "here.mp4" not in text


@pytest.mark.parametrize(("reply", "letter"), [
    ("B", "B"), ("(C) a ball", "C"), ("A.", "A"), ("D: the dog", "D"), ("Answer: B", "B"),
    ("The answer is C.", "C"), ("The best answer is (D)", "D"), ("I think it is B because", "B"),
    ("b", ""), ("E", ""), ("", ""), ("no idea", ""), ("It shows a blue ball", "B"), ("red or blue", ""),
])
def test_choice_extraction(reply, letter):
    assert extract_choice(reply, ("a red cup", "a blue ball", "green", "a dog")) == letter


def test_scoring_multiple_choice_and_open():
    mc = QARecord(id="1", video=__import__("pathlib").Path("v.mp4"), question="q", answer="a blue ball",
                  options=("a red cup", "a blue ball"))
    assert score(mc, "B. a blue ball") == ("B", True)
    assert score(mc, "A") == ("A", False)
    assert score(mc, "hmm") == ("", False)
    open_q = QARecord(id="2", video=mc.video, question="q", answer="The red car")
    assert score(open_q, "red car!") == ("red car", True)
    assert score(open_q, "a red truck") == ("red truck", False)
    assert score(open_q, "...") == ("", False)
    assert normalize_text("  An   Apple, the PIE. ") == "apple pie"


@pytest.mark.parametrize("answer", ["A", "The", "?", " an ... "])
def test_user_gives_an_open_answer_that_normalises_to_nothing(tmp_path, answer):
    path = _write(tmp_path, [{"video": "a.mp4", "question": "q", "answer": "red"},
                             {"video": "a.mp4", "question": "what?", "answer": answer}])
    with pytest.raises(DataError) as err:
        load_records(path)
    text = str(err.value)
    assert f"{path}:2:" in text and repr(answer) in text and "no word" in text and "\n" not in text
    # the same text is a fine multiple-choice answer: a letter
    load_records(_write(tmp_path, [{"video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": "A"}]))


def test_user_saves_the_data_file_with_a_byte_order_mark_or_as_utf16_without_one(tmp_path):
    path = tmp_path / "qa.jsonl"
    line = json.dumps({"video": "a.mp4", "question": "q", "answer": "red"}) + "\n"
    path.write_bytes(b"\xef\xbb\xbf" + line.encode())  # UTF-8 as Windows editors save it: accepted
    assert load_records(path)[0].answer == "red"
    path.write_bytes(line.encode("utf-16-le"))
    with pytest.raises(DataError) as err:
        load_records(path)
    assert f"{path}:1:" in str(err.value) and "UTF-16" in str(err.value) and "save the file as UTF-8" in str(err.value)


def test_user_asks_for_more_frames_than_some_clips_have_in_any_container(tmp_path):
    import torch

    from sharp_vlm.eval.clips import check_clips, frame_count
    from sharp_vlm.video.decode import write_video

    pixels = torch.zeros(5, 40, 56, 3, dtype=torch.uint8)
    mp4, mkv = write_video(tmp_path / "a.mp4", pixels), write_video(tmp_path / "b.mkv", pixels)
    assert frame_count(mp4) == frame_count(mkv) == 5  # mkv keeps no count in its header: its packets are counted
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    recs = [QARecord(id=f"r{i}", video=video, question="q", answer="a", line=i + 1)
            for i, video in enumerate([mp4, mkv, tmp_path / "bad.mp4"])]
    check_clips(recs[:2], frames=5, fps=None)
    check_clips(recs[:2], frames=64, fps=2.0)  # by rate, --frames is a cap
    with pytest.raises(DataError) as err:
        check_clips(recs, frames=6, fps=None, source="qa.jsonl")
    text = str(err.value)
    assert "3 of the 3 samples still to answer in qa.jsonl" in text and "\n" not in text
    assert "line 1 (id r0)" in text and "a.mp4 has 5 frames" in text and "line 2 (id r1)" in text
    assert "line 3 (id r2)" in text and "bad.mp4 cannot be read as a video" in text and "--frames 5" in text
