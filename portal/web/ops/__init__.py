"""Endpoints for machines: /healthz and /readyz for load balancers and Kubernetes, /metrics
for Prometheus (bearer token EIS_METRICS_TOKEN)."""
