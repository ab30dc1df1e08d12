# A Hub-compatible server on 127.0.0.1 (tests/hub_server.py): one per test, with a fresh HF_HOME and cache.
from hub_server import local_hub  # noqa: F401
