"""The "Send email" form on a customer's Activities tab (htmx fragment) and its routes."""
