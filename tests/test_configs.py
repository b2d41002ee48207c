"""Every shipped YAML config parses through the CLI, so a broken config fails CI instead of a user's run."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*") if p.suffix in {".yaml", ".yml"})


@pytest.mark.skipif(
    not (ROOT / "svlm" / "cli.py").exists(), reason="svlm/cli.py (the CLI) does not exist yet"
)
@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_parses(path: Path):
    import svlm.cli

    assert svlm.cli.parse_config(path) is not None
