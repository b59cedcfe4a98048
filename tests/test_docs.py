"""The docs under docs/ stay true to the code: the settings page is what its generator
prints, the simulator's example worlds parse, every OpenAPI path is in the HTTP overview,
and relative links in README.md and docs/*.md lead to files that exist."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from wasync.http.openapi import DOCUMENT
from wasync.runtime.sim.world import parse_world

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_settings", DOCS / "gen_settings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_page_is_what_the_generator_prints():
    generator = _generator()
    assert (DOCS / "settings.md").read_text(encoding="utf-8") == generator.render(), (
        f"docs/settings.md is stale: run `{generator.COMMAND}`")


def test_settings_page_names_every_variable():
    from wasync.runtime.config import AUTO_BACKFILL_SWITCHES, VARIABLES

    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    for name in [n for var in VARIABLES for n in var.names] + list(AUTO_BACKFILL_SWITCHES):
        assert f"`{name}`" in text, name


def _json_blocks(path: Path) -> list[str]:
    return re.findall(r"^```json\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def test_example_worlds_in_the_simulator_doc_parse():
    blocks = [json.loads(block) for block in _json_blocks(DOCS / "simulator.md")]  # every json block is JSON
    worlds = [b for b in blocks if isinstance(b, dict) and "accounts" in b]
    assert worlds, "docs/simulator.md should show at least one complete world"
    for world in worlds:
        parse_world(world)  # raises WorldError naming the bad field


def test_every_openapi_path_is_in_the_http_overview():
    text = (DOCS / "http-api.md").read_text(encoding="utf-8")
    missing = [path for path in DOCUMENT["paths"]
               if not re.search(r"(?<![\w/{}.-])" + re.escape(path) + r"(?![\w/{}.-])", text)]
    assert not missing, f"docs/http-api.md does not mention: {missing}"


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.S | re.M)  # not in code blocks
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "//")):
            continue  # http(s), mailto, ... and anchors within the page
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"
