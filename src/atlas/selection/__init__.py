"""Traffic-node selection (design section 3): pure, explainable, benchmarked.

Where is the traffic node chosen? ``selector`` (the rules in order), with ``viability``
(rule 1), ``prefixes`` (rule 2), ``methods`` (rule 3) and ``fallback`` (rule 4);
``decision`` holds what comes out, ``health`` and ``client`` what goes in.
"""

from atlas.selection.client import ClientFacts, ClientKind
from atlas.selection.decision import (
    AnycastDirective,
    ARecordDirective,
    Decision,
    Directive,
    FallbackToMaster,
    FallbackWanted,
    NodeChosen,
    NoneAvailable,
    Outcome,
    Routing,
    Rule,
    Selection,
    SrvDirective,
)
from atlas.selection.fallback import MasterFallback, admit
from atlas.selection.health import HealthSnapshot, NodeHealth
from atlas.selection.prefixes import PrefixIndex, PrefixMatch
from atlas.selection.selector import Selector, prefix_candidates, select_traffic_node
from atlas.selection.viability import NotViable, Viability, assess_viability

__all__ = [
    "ARecordDirective",
    "AnycastDirective",
    "ClientFacts",
    "ClientKind",
    "Decision",
    "Directive",
    "FallbackToMaster",
    "FallbackWanted",
    "HealthSnapshot",
    "MasterFallback",
    "NodeChosen",
    "NodeHealth",
    "NoneAvailable",
    "NotViable",
    "Outcome",
    "PrefixIndex",
    "PrefixMatch",
    "Routing",
    "Rule",
    "Selection",
    "Selector",
    "SrvDirective",
    "Viability",
    "admit",
    "assess_viability",
    "prefix_candidates",
    "select_traffic_node",
]
