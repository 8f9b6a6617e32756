"""One router per resource: act, transitions, policy, admin, health, and the dashboard page."""
