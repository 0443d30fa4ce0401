"""The feature-server's dial-plan notation, sans-I/O: patterns and their trie,
rules and targets, partitions, calling profiles and the compiled plan
(docs/feature-server.md, "Notation")."""

from protocols.dialplan.errors import DialPlanError
from protocols.dialplan.pattern import PatternTrie, parse_pattern
from protocols.dialplan.plan import (
    ASSIGNMENT_KINDS,
    PRECEDENCE,
    CallingProfile,
    DialPlan,
    Partition,
    check_assignments,
    check_name,
    compile_plan,
    parse_partition,
    parse_profile,
)
from protocols.dialplan.rules import Action, Decision, Rule, Target, parse_rule, parse_target

__all__ = [
    "ASSIGNMENT_KINDS",
    "PRECEDENCE",
    "Action",
    "CallingProfile",
    "Decision",
    "DialPlan",
    "DialPlanError",
    "Partition",
    "PatternTrie",
    "Rule",
    "Target",
    "check_assignments",
    "check_name",
    "compile_plan",
    "parse_partition",
    "parse_pattern",
    "parse_profile",
    "parse_rule",
    "parse_target",
]
