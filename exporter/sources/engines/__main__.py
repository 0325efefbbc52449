"""``python -m exporter.sources.engines`` prints docs/engines.md's mapping table."""

import sys

from exporter.sources.engines import markdown_mapping

sys.stdout.write(markdown_mapping())
