"""Observability: AIPROD's metrics through Ray's metrics agent (catalog), the Serve middleware and
hooks (serve_metrics), training and Tune metrics (training_metrics), the loss anomaly detector
(anomaly), and the checks of the alert rules and dashboard in deploy/ (rules_check)."""
