"""Regenerate the generated blocks of README.md and docs/*.md from the code (the tests compare them).

    python3 tools/update_docs.py
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.catalog import markdown_table  # noqa: E402
from exporter.config import markdown_reference  # noqa: E402
from exporter.sources.engines import markdown_mapping  # noqa: E402
from tools.accuracy_table import BLOCKS as ACCURACY  # noqa: E402
from tools.engine_support import markdown_support, markdown_vllm_versions  # noqa: E402
from tools.verdict_table import corpus_table  # noqa: E402

BLOCKS: tuple[tuple[str, str, Callable[[], str]], ...] = (
    ("README.md", "cli", markdown_reference),
    ("README.md", "metrics", markdown_table),
    ("README.md", "engines", markdown_support),
    ("docs/engines.md", "mapping", markdown_mapping),
    ("docs/engines.md", "vllm-versions", markdown_vllm_versions),
    ("docs/analytic-model.md", "verdict-table", corpus_table),
    *(("docs/accuracy.md", name, render) for name, render in ACCURACY.items()),
)


def main() -> int:
    for document, name, render in BLOCKS:
        path = ROOT / document
        text = path.read_text(encoding="utf-8")
        pattern = re.compile(rf"(<!-- {name}:start[^>]*-->\n)(.*?)(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            print(f"{document}: no {name} block", file=sys.stderr)
            return 1
        block = render()
        updated = pattern.sub(lambda m, block=block: m.group(1) + block + m.group(3), text)
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            print(f"updated the {name} block of {document}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
