"""Code run in a new interpreter at the repository's root: what a fresh process imports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: a line for such code: the compiler stack (~1 s of start-up) was never imported
NO_DYNAMO = "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n"


def run_fresh(code: str, timeout: float = 600) -> str:
    """``python -c code`` from the repository's root; its stdout (its stderr's end on failure)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
