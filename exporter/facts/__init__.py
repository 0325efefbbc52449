"""Facts as data, each with its source and the date it was read.

- :mod:`exporter.facts.gpus`: peak memory bandwidth, dense tensor FLOP/s, memory, TDP and default
  $/GPU-hour for the GPUs the exporter meets, keyed by the NVML product name
  (``nvmlDeviceGetName``); the table is ``gpus.toml`` beside this file.
- :mod:`exporter.facts.models`: a model's shape (layers, heads, KV heads, experts), its parameter
  count and weight bytes, computed from a Hugging Face ``config.json``; a few published configs
  ship in ``models/`` (their provenance is in ``models/SOURCES.md``).

Everything here is a default: the config file overrides any GPU row or price, and a served model
can be described by pointing at its own ``config.json``. Nothing is downloaded at run time.
"""
