"""Storage lifecycle (issue 16): policies of ordered rules, their dry run, lossy archival by quality-layer
truncation of the lossless masters, QA of every lossy frame, and moving studies to the cold tier."""

from storage.lifecycle.apply import ApplyResult, OnChange, OnProgress
from storage.lifecycle.plan import PolicyPlan, RulePlan
from storage.lifecycle.policy import Policy, PolicyError, Rule, load_policy, parse_policy

__all__ = [
    "ApplyResult",
    "OnChange",
    "OnProgress",
    "Policy",
    "PolicyError",
    "PolicyPlan",
    "Rule",
    "RulePlan",
    "load_policy",
    "parse_policy",
]
