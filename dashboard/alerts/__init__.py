"""Alerts: rules as a pure state machine, their storage and cache, the no-data job, notification transports, the screen."""
