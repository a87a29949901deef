"""One router per resource: health, recommendations, model, admin."""
