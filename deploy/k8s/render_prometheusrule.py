"""Writes deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/rules.

The alert and objective rules have one source, the Prometheus rule files; the
Prometheus Operator needs them wrapped in a PrometheusRule object. Run after
changing a rule file (tests/python/test_deploy.py fails until you do):

    python3 deploy/k8s/render_prometheusrule.py
"""
import pathlib

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parents[1]
RULE_FILES = [DEPLOY / "prometheus" / "rules" / name for name in ("alerts.yml", "objectives.yml")]
TARGET = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# Prometheus Operator: bedrock-proxy's alert and objective rules. GENERATED from
# deploy/prometheus/rules/*.yml by deploy/k8s/render_prometheusrule.py; edit
# those files and rerun it. Your Prometheus's ruleSelector must match this
# object's labels (kube-prometheus-stack: add `release: <helm release>`).
"""


class _Dumper(yaml.SafeDumper):
    """Keeps multi-line PromQL readable (block scalars) and keys in file order."""


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render():
    """The PrometheusRule manifest text."""
    groups = []
    for path in RULE_FILES:
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "bedrock-proxy", "labels": {"app.kubernetes.io/name": "bedrock-proxy"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=120)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
