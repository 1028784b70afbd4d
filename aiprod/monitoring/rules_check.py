"""Checks of deploy/: the Prometheus alert rules (schema, and `promtool check rules` when it is on
PATH) and the Grafana dashboard; every metric an expression names must be one AIPROD exports
(aiprod.monitoring.catalog), so a renamed metric cannot leave a silent alert behind.

    python -m aiprod.monitoring.rules_check [deploy/prometheus-rules.yml] [deploy/grafana-dashboard.json]
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from aiprod.monitoring.catalog import exported_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES_FILE = DEPLOY / "prometheus-rules.yml"
DASHBOARD_FILE = DEPLOY / "grafana-dashboard.json"
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
ALERT_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, label names, keywords or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($__rate_interval, ${run})
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def _unknown(expr: str, where: str, known: set[str]) -> list[str]:
    return [f"{where}: unknown metric {name!r} (not in aiprod.monitoring.catalog)"
            for name in sorted(metric_names(expr) - known)]


def check_rules(data: Any, known: set[str] | None = None) -> list[str]:
    """Problems of a parsed Prometheus rules file; [] when it is well formed."""
    known = exported_names() if known is None else known
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list) or not data["groups"]:
        return ["top level: needs a non-empty list `groups`"]
    problems, groups, alerts = [], set(), set()
    for g, group in enumerate(data["groups"]):
        where = f"groups[{g}]"
        if not isinstance(group, dict) or not isinstance(group.get("name"), str) or not group["name"]:
            problems.append(f"{where}: needs a `name`")
            continue
        if group["name"] in groups:
            problems.append(f"{where}: group name {group['name']!r} is used twice")
        groups.add(group["name"])
        if "interval" in group and not DURATION.match(str(group["interval"])):
            problems.append(f"{where}.interval: {group['interval']!r} is not a duration like 1m")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{where}: needs a non-empty list `rules`")
            continue
        for r, rule in enumerate(rules):
            problems += _check_rule(rule, f"{where}.rules[{r}]", known, alerts)
    return problems


def _check_rule(rule: Any, where: str, known: set[str], alerts: set[str]) -> list[str]:
    if not isinstance(rule, dict):
        return [f"{where}: must be a mapping"]
    problems = [f"{where}: unknown key {key!r} (allowed: {sorted(RULE_KEYS)})" for key in sorted(set(rule) - RULE_KEYS)]
    name = rule.get("alert")
    if not isinstance(name, str) or not ALERT_NAME.match(name):
        problems.append(f"{where}.alert: needs a CamelCase alert name, got {name!r}")
    elif name in alerts:
        problems.append(f"{where}.alert: {name!r} is defined twice")
    else:
        alerts.add(name)
        where = f"{where} ({name})"
    expr = rule.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        problems.append(f"{where}.expr: needs a PromQL expression")
    else:
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            problems.append(f"{where}.expr: unbalanced brackets")
        problems += _unknown(expr, f"{where}.expr", known)
    for key in ("for", "keep_firing_for"):
        if key in rule and not DURATION.match(str(rule[key])):
            problems.append(f"{where}.{key}: {rule[key]!r} is not a duration like 5m")
    labels = rule.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        problems.append(f"{where}.labels: needs a mapping of strings")
    elif labels.get("severity") not in SEVERITIES:
        problems.append(f"{where}.labels.severity: must be one of {sorted(SEVERITIES)}, got {labels.get('severity')!r}")
    notes = rule.get("annotations")
    if not isinstance(notes, dict) or not all(isinstance(notes.get(k), str) and notes[k] for k in ("summary",
                                                                                                     "description")):
        problems.append(f"{where}.annotations: needs a `summary` and a `description`")
    return problems


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in a Grafana dashboard (rows' nested panels included)."""
    found = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((panel.get("title", "?"), target["expr"]))
    return found


def check_dashboard(dashboard: Any, known: set[str] | None = None) -> list[str]:
    known = exported_names() if known is None else known
    if not isinstance(dashboard, dict) or not dashboard.get("title") or not dashboard.get("panels"):
        return ["dashboard: needs a `title` and `panels`"]
    exprs = dashboard_exprs(dashboard)
    problems = [] if exprs else ["dashboard: no panel has a query"]
    for title, expr in exprs:
        problems += _unknown(expr, f"panel {title!r}", known)
    return problems


def promtool(path: Path) -> tuple[bool, str] | None:
    """(ok, output) of `promtool check rules PATH`, or None when promtool is not installed."""
    exe = shutil.which("promtool")
    if exe is None:
        return None
    done = subprocess.run([exe, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    return done.returncode == 0, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    rules = Path(args[0]) if args else RULES_FILE
    dashboard = Path(args[1]) if len(args) > 1 else DASHBOARD_FILE
    problems = [f"{rules}: {p}" for p in check_rules(yaml.safe_load(rules.read_text(encoding="utf-8")))]
    problems += [f"{dashboard}: {p}" for p in check_dashboard(json.loads(dashboard.read_text(encoding="utf-8")))]
    checked = promtool(rules)
    if checked is not None and not checked[0]:
        problems.append(f"promtool check rules {rules}: {checked[1].strip()}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"ok: {rules} ({'promtool and ' if checked else ''}schema), {dashboard}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
