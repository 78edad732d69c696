"""Test-wide settings: offline Hugging Face libraries, quiet progress bars, shared fixtures."""

import os

# Set before any HF library is imported by a test module: a Hub lookup offline costs ~46 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["fixtures_llm", "fixtures_models", "fixtures_hub"]
