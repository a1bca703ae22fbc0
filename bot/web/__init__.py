"""The HTTP app: webhooks, health, and later the CRM widget and metrics."""
