"""`python -m exporter` runs the infermeter command."""

from exporter.cli import main

raise SystemExit(main())
