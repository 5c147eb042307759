"""An lmms-eval task folder made from a `sharp eval` JSONL file, so lmms-eval can run it offline.

`write_lmms_task(jsonl, folder, name)` writes `folder/<name>.yaml`, `folder/<name>_utils.py` and
`folder/<name>.json` (the records, video paths made absolute). lmms-eval then runs it with
`--include_path folder --tasks <name>`: the data loads with `datasets`' local `json` builder (no hub access),
multiple-choice replies are scored with lmms-eval's own `extract_mcq_answer` (as its VideoMME task does), open
questions by the same normalised exact match as `sharp eval`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .data import LETTERS, load_records

_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function {name}_utils.doc_to_visual
doc_to_text: !function {name}_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
process_results: !function {name}_utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    post_prompt: "Answer with the option's letter from the given choices directly."
"""

_UTILS = '''\
"""Prompt and scoring of the {name} task (written by sharp_vlm.eval.lmms_task)."""

import re
import string

LETTERS = "{letters}"
_ARTICLES = re.compile(r"\\b(a|an|the)\\b")
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


def _normalize(text):
    return " ".join(_ARTICLES.sub(" ", _PUNCT.sub(" ", text.lower())).split())


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {{}}
    if not doc["options"]:
        return doc["question"]
    lines = [doc["question"]] + [f"{{LETTERS[i]}}. {{o}}" for i, o in enumerate(doc["options"])]
    return "\\n".join(lines + [kwargs.get("post_prompt", "")]).strip()


def process_results(doc, results):
    reply = results[0]
    if doc["options"]:
        from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer

        pred = extract_mcq_answer(reply, choices=list(LETTERS[: len(doc["options"])]))
    else:
        pred = _normalize(reply)
    return {{"accuracy": float(bool(pred) and pred == doc["answer"])}}
'''


def write_lmms_task(jsonl: str | Path, folder: str | Path, name: str = "sharp_local_qa",
                    max_new_tokens: int = 16) -> Path:
    """Write the task folder; return the YAML path. `name` must be a Python identifier (it names the module)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"task name {name!r} must be a Python identifier (letters, digits, underscores)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for rec in load_records(jsonl):
        docs.append({"id": rec.id, "video": str(rec.video.resolve()), "question": rec.question,
                     "options": list(rec.options or []), "answer": rec.answer_key})
    data = folder / f"{name}.json"
    data.write_text("\n".join(json.dumps(d) for d in docs) + "\n")  # JSON lines: datasets' json builder reads them
    (folder / f"{name}_utils.py").write_text(_UTILS.format(name=name, letters=LETTERS))
    yaml = folder / f"{name}.yaml"
    yaml.write_text(_YAML.format(name=name, data=json.dumps(str(data.resolve())), max_new_tokens=max_new_tokens))
    return yaml
