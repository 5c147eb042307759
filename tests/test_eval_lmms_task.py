"""A `sharp eval` JSONL as an lmms-eval task folder: the YAML, the data lines and the task's own prompt and
scoring functions (the lmms-eval run itself is `make test-lmms`)."""

import importlib.util
import json

import pytest

from sharp_vlm.eval.lmms_task import write_lmms_task
from sharp_vlm.eval.sample_data import write_sample_set


def test_task_folder(tmp_path):
    jsonl = write_sample_set(tmp_path / "data", n=3, frames=2)
    yaml = write_lmms_task(jsonl, tmp_path / "task", "my_task", max_new_tokens=5)
    text = yaml.read_text()
    assert "task: my_task\ndataset_path: json\n" in text and "max_new_tokens: 5" in text
    assert "doc_to_visual: !function my_task_utils.doc_to_visual" in text
    docs = [json.loads(x) for x in (tmp_path / "task" / "my_task.json").read_text().splitlines()]
    assert [d["answer"] for d in docs] == ["A", "B", "blue"]
    assert all(d["video"].startswith(str(tmp_path)) for d in docs)
    spec = importlib.util.spec_from_file_location("my_task_utils", tmp_path / "task" / "my_task_utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert utils.doc_to_visual(docs[0]) == [docs[0]["video"]]
    prompt = utils.doc_to_text(docs[0], {"post_prompt": "Answer with a letter."})
    assert prompt.splitlines() == ["Which colour fills the video?", "A. red", "B. green", "C. blue", "D. yellow",
                                   "Answer with a letter."]
    assert utils.doc_to_text(docs[2]) == docs[2]["question"]
    assert utils.process_results(docs[2], ["Blue."]) == {"accuracy": 1.0}
    assert utils.process_results(docs[2], ["green"]) == {"accuracy": 0.0}
    with pytest.raises(ValueError, match="Python identifier"):
        write_lmms_task(jsonl, tmp_path / "t2", "my-task")
