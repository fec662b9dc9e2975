"""Operator pages and the JSON endpoints they call: sources, dashboards, alerts, share links, health; routes in urls.py."""
