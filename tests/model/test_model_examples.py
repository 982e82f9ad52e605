"""The documented example cluster loads (docs/configuration.md, docs/examples/cluster.toml)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from atlas.model.config import ClusterConfig, SelectionMethod

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_example_file_loads() -> None:
    text = (DOCS / "examples" / "cluster.toml").read_text(encoding="utf-8")
    config = ClusterConfig.model_validate(tomllib.loads(text))
    assert config == ClusterConfig.from_toml(text)
    assert config.site_hostname == "support.example.com"
    assert config.primary.name == "master1"
    assert config.backup is not None and config.backup.name == "master2"
    assert [n.name for n in config.traffic_nodes] == [
        "us-traffic1",
        "us-traffic2",
        "asia-traffic1",
    ]
    assert config.selection.method is SelectionMethod.TIMEZONE
    assert config.selection.master_fallback_limit == 50
    assert config.traffic_nodes[1].prefixes == ("10.20.0.0/16", "198.51.100.0/24")
    assert config.traffic_nodes[0].timezone == "America/New_York"


def test_every_toml_block_in_the_docs_validates() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    assert blocks
    for block in blocks:
        ClusterConfig.from_toml(block)


def test_the_brief_shape_validates() -> None:
    config = ClusterConfig.from_toml(
        """
site_hostname = "support.example.com"
[primary]
name = "master1"
public = "master1.support.example.com:443"
[selection]
method = "timezone"
master_fallback_limit = 50
[[traffic_nodes]]
name = "us-traffic1"
public = "us-traffic1.support.example.com:443"
prefixes = ["10.10.0.0/16"]
timezone = "America/New_York"
"""
    )
    assert config.traffic_nodes[0].prefixes == ("10.10.0.0/16",)
