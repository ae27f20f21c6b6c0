"""Loading models and tokenizers."""

from __future__ import annotations


def test_transformers_classes_import_safely_from_many_threads():
    """transformers' lazy import fails when threads race on it (seen: parallel job validations)."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from tuneloop.models.loading import auto_classes\n"
        "errors = []\n"
        "def load():\n"
        "    try:\n"
        "        auto_classes()\n"
        "    except Exception as exc:\n"
        "        errors.append(exc)\n"
        "threads = [threading.Thread(target=load) for _ in range(8)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "assert not errors, errors\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
