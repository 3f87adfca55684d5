"""Where things are: the project's root, its package, and the published WF-TECH-003 contract
beside the project (``../shared/contract/``), which the schema checks use when it exists."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "wirthforge_trio"
CONTRACT_DIR = ROOT.parent / "shared" / "contract"
PUBLISHED_SCHEMA = CONTRACT_DIR / "WF-TECH-003-event-schemas.json"
