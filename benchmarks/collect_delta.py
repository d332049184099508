"""Gather the delta benchmarks' rows into ``results/delta.json``, issue 19's table, from the result files they
wrote: ``delta_convert*.json`` (converted sweeps: spoken digits, JapaneseVowels GRU and LSTM) and
``delta_train*.json`` (trained points). The streaming benchmark (``bench_delta_stream.py``) merges its own rows;
every delta benchmark now merges into ``delta.json`` itself, so this is needed only for results written before
(no benchmark is rerun: the rows are copied, each tagged with its ``source`` file).

    .venv/bin/python benchmarks/collect_delta.py
"""

from __future__ import annotations

import json
import re

from _common import RESULTS
from bench_delta_convert import merge_delta


def main() -> None:
    for path in sorted(RESULTS.glob("delta_convert*.json")) + sorted(RESULTS.glob("delta_train*.json")):
        rows = json.loads(path.read_text())
        if path.name.startswith("delta_convert"):  # the hidden size is in the Markdown twin's first line
            m = re.search(r"[A-Z]+\((\d+)\) x \d+ layer", path.with_suffix(".md").read_text())
            rows = [{**r, "hidden": int(m.group(1)) if m else None} for r in rows]
        merge_delta(rows, path.name)
        print(f"{path.name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
