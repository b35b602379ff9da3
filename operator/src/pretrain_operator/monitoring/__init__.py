"""Monitoring as code: the alert rules and Grafana dashboards that `make manifests` writes into
the chart, from the same metric names the operator and trainer export."""
