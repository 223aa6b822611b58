"""The admin port: REST API, OpenAPI, Prometheus metrics, history, recommendations, load test, page."""
