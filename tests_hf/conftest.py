"""The torch-only preprocessing against the HF processors: needs torchvision (`make test-hf` builds that venv)."""

from __future__ import annotations

RESULTS: list[dict] = []


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    terminalreporter.section("preprocessing vs the HF processors")
    terminalreporter.write_line(f"{'family':18} {'config':6} {'frames':>6} {'input HxW':>10} {'model HxW':>10} "
                                f"{'visual':>7} {'ids':>5} {'max |pixel diff|':>17}")
    for r in RESULTS:
        terminalreporter.write_line(
            f"{r['family']:18} {r['config']:6} {r['frames']:>6} {r['input']:>10} {r['model']:>10} "
            f"{r['n_visual']:>7} {r['ids']:>5} {r['max_diff']:>17.3g}")
