"""The README's generated tables match the catalogue and the settings."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.catalog import markdown_table
from exporter.config import markdown_reference
from exporter.sources.engines import markdown_mapping
from tools.engine_support import markdown_support
from tools.verdict_table import corpus_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _block(name: str, document: Path = README) -> str:
    text = document.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name}:start[^>]*-->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert match, f"{document.name} has no {name} block"
    return match.group(1)


def test_metric_table_is_generated_from_the_catalogue() -> None:
    assert _block("metrics") == markdown_table(), "run: python3 tools/update_docs.py"


def test_cli_reference_is_generated_from_the_settings() -> None:
    assert _block("cli") == markdown_reference(), "run: python3 tools/update_docs.py"


def test_engine_mapping_in_docs_is_generated_from_the_adapters() -> None:
    assert _block("mapping", ROOT / "docs" / "engines.md") == markdown_mapping(), \
        "run: python3 tools/update_docs.py"


def test_verdict_table_is_generated_from_the_real_vllm_corpus() -> None:
    assert _block("verdict-table", ROOT / "docs" / "analytic-model.md") == corpus_table(), \
        "run: python3 tools/update_docs.py"


def test_engine_support_table_is_generated_from_the_adapters_and_fixtures() -> None:
    assert _block("engines") == markdown_support(), "run: python3 tools/update_docs.py"
